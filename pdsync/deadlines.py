"""A deadline for a whole HTTP response, headers and body, not only for each read.

httpx's timeouts bound each read: a server that sends one byte every few seconds never trips
them, and a response could take days. The client sets a deadline per request (per thread:
fetchers share one ``httpx.Client``); every socket read and write of that request then waits
at most until the deadline, and past it fails as a timeout, which the client retries or
reports like any other.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx


class _Local(threading.local):
    at: float | None = None


_current = _Local()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every read and write of this thread's requests ends within ``seconds`` from now."""
    _current.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _current.at = None


def expired() -> bool:
    return _current.at is not None and time.monotonic() >= _current.at


def _cap(timeout: float | None) -> float | None:
    at = _current.at
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the response took longer than its deadline")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _cap(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _cap(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout=None):
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, _cap(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = self._backend.connect_tcp(host, port, _cap(timeout), local_address, socket_options)
        return _Stream(stream)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _Stream(self._backend.connect_unix_socket(path, _cap(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def bound(client: httpx.Client) -> None:
    """Bound the sockets of ``client``'s transports (its own, and those httpx made for the
    environment's proxies) by the current thread's deadline.

    httpx has no public way to give a pool a network backend: this sets the pools' backend
    before their first connection. Where it cannot (a transport someone passed in, another
    httpx), the client still checks the deadline between the body's chunks.
    """
    transports = [client._transport, *client._mounts.values()]
    for made in transports:
        pool = getattr(made, "_pool", None)  # HTTPProxy and SOCKSProxy are ConnectionPools too
        if isinstance(pool, httpcore.ConnectionPool) and hasattr(pool, "_network_backend"):
            if not isinstance(pool._network_backend, _Backend):
                pool._network_backend = _Backend(pool._network_backend)
