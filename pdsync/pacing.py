"""Spacing a sync's schema changes, so Datasette's readers never fail to reconnect.

Index builds are schema changes. A reader (Datasette) whose statement is being prepared
across two schema changes a few milliseconds apart can fail to reconnect a full-text table
("vtable constructor failed: persons_fts"); measured: 10 ms apart failed ~2 % of changes,
20 ms and more never. So cheap builds share one commit (``BATCH``), and commits that change
the schema are spaced (``GAP``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import sqlite_utils

from .transaction import write_transaction

BATCH = 0.1  # a commit takes in further index builds for this many seconds
GAP = 0.05  # seconds between schema-changing commits


class SchemaPacer:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self._calm_at = 0.0  # monotonic time after which a schema change may commit

    def version(self) -> int:
        return self.db.execute("pragma schema_version").fetchone()[0]

    def changed(self) -> None:
        """A schema change has just committed (outside ``transaction``)."""
        self._calm_at = time.monotonic() + GAP

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """``write_transaction``. If it changed the schema, it commits no sooner than ``GAP`` after
        the last schema change: an index build that took that long waits for nothing."""
        before = self.version()
        changed = False
        with write_transaction(self.db):
            yield
            if self.version() != before:
                changed = True
                delay = self._calm_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        if changed:
            self.changed()
