"""Serve a FakePipedrive over real HTTP/1.1 (keep-alive) on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from .front import INTERNAL_ERROR, Reply

if TYPE_CHECKING:
    from .core import FakePipedrive

log = logging.getLogger(__name__)

_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pdsync-fake-pipedrive"
    timeout = 300  # idle keep-alive connections end eventually
    server: _Server

    def setup(self) -> None:
        super().setup()
        # One write per response, and no Nagle delay on the last segment.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # the fake keeps its own request log

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = 0
        # Read any body (it also keeps the connection usable): POST /v1/webhooks takes one.
        body = self.rfile.read(length) if length > 0 else b""
        fake = self.server.fake
        stop = self.server.stopping
        if fake.latency > 0 and stop.wait(fake.latency):
            self.close_connection = True
            return
        try:
            reply = fake.handle(self.command, self.path, dict(self.headers.items()), body)
        except Exception:  # a bug or a closed fake: answer like a server would, and log it
            log.exception("fake Pipedrive failed on %s %s", self.command, self.path)
            reply = Reply(500, INTERNAL_ERROR)
            self.close_connection = True
        if reply.action == "reset":
            self.close_connection = True
            self.server.reset_on_close(self.connection)
            return
        if reply.action == "hold" and stop.wait(fake.timeout_hold):
            self.close_connection = True
            return
        body = reply.body
        head = [
            f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(body)}",
        ]
        head.extend(f"{k}: {v}" for k, v in reply.headers)
        if self.close_connection:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        try:
            if reply.action == "truncated":
                self.wfile.write(data + body[: len(body) // 2])
                self.close_connection = True
            else:
                self.wfile.write(data + body)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakePipedrive) -> None:
        self.fake = fake
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._reset: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn): slow and pointless here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def track(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(sock)

    def reset_on_close(self, sock: socket.socket) -> None:
        # Linger 0 turns the close into a TCP RST: "connection reset by peer".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._open_lock:
            self._reset.add(sock)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._open_lock:
            reset = request in self._reset
            self._reset.discard(request)
        if reset:
            self.close_request(request)  # no FIN first, so the peer sees the reset
        else:
            super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        # socketserver prints tracebacks to stderr; a library logs instead.
        log.debug("connection from %s failed", client_address, exc_info=True)

    def close_all(self) -> None:
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FakeServer:
    """Serve ``fake`` in a daemon thread; ``url`` is the base (``/api/v2/...``, ``/v1/...``)."""

    def __init__(self, fake: FakePipedrive, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fake = fake
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> FakeServer:
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self.fake)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-pipedrive:{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every socket, including idle keep-alive ones."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.close_all()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def serve_forever(self) -> None:
        """Start if needed and block until stop() (from another thread) or Ctrl-C."""
        self.start()
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.5)
        finally:
            self.stop()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
