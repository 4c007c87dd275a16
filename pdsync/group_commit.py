"""Several pages of a first load in one commit, each still together with its resume point.

A first load in id order appends its rows; what a commit then costs is mostly fixed
(``BEGIN IMMEDIATE``, the B-tree's interior pages and the last leaf written to the WAL
again, the bookkeeping rows). While pages are waiting in the queue, the writer keeps one
transaction open and writes each page, with the resume point it reaches, in a savepoint of
it; it commits when ``RECORDS`` rows or ``SECONDS`` have gone in, when the queue is empty
(never holding the write lock while it waits for Pipedrive), and before anything that is
not such a page. Every committed state is therefore some page and its resume point, as
with one commit per page: a kill loses only what was not committed, and the rerun resumes
from the last resume point committed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time

from .pacing import SchemaPacer

RECORDS = 5000  # rows per commit, at most (10 pages of 500)
SECONDS = 0.5  # and no longer than this since the transaction began


class GroupCommit:
    def __init__(self, pacer: SchemaPacer) -> None:
        self.pacer = pacer
        self._stack: contextlib.ExitStack | None = None
        self._records = 0
        self._started = 0.0
        self.keys: set[tuple[str, str]] = set()  # (entity, stream) written in this group
        self.spend: dict[str, tuple[int, int]] = {}  # the spend counted when it began

    @property
    def open(self) -> bool:
        return self._stack is not None

    def begin(self, spend: dict[str, tuple[int, int]]) -> None:
        """Open the group's transaction unless it is open (the pacer spaces its commit if a
        page changed the schema, a column Pipedrive added)."""
        if self._stack is not None:
            return
        stack = contextlib.ExitStack()
        stack.enter_context(self.pacer.transaction())
        self._stack, self._records, self._started = stack, 0, time.monotonic()
        self.keys, self.spend = set(), dict(spend)

    def wrote(self, key: tuple[str, str], records: int) -> None:
        self.keys.add(key)
        self._records += records

    def due(self) -> bool:
        return self._records >= RECORDS or time.monotonic() - self._started >= SECONDS

    def commit(self) -> None:
        """Commit the group. Raises sqlite3.Error when it is lost (rolled back)."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if not self.pacer.db.conn.in_transaction:  # a RAISE(ROLLBACK) ended it
            raise sqlite3.OperationalError("the transaction was rolled back")
        stack.close()

    def rollback(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            error = sqlite3.OperationalError("rolled back")
            with contextlib.suppress(sqlite3.Error):
                stack.__exit__(type(error), error, None)
