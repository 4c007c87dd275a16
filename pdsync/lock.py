"""One sync at a time per database file, with an advisory lock beside it.

``flock`` is released by the kernel when the process dies, so a sync killed with SIGKILL never
leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time


class LockHeld(Exception):
    """Another sync holds the lock on this database."""


class SyncLock:
    def __init__(self, db_path: str) -> None:
        # The real path, so a symlink to the database takes the same lock. A hard link is
        # another name for the same file that nothing can resolve: the lock cannot see it.
        self.path = f"{os.path.realpath(db_path)}.lock"
        self._fd: int | None = None

    def acquire(self, wait: bool = False, timeout: float | None = None) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    holder = _read_pid(fd)
                    os.close(fd)
                    who = f" (pid {holder})" if holder else ""
                    raise LockHeld(
                        f"another pdsync sync{who} is already running on this database"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SyncLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
