"""The writer's transactions: ``db.atomic()``, but taking the write lock when they begin.

A plain ``BEGIN`` reads first and asks for the write lock at its first write. If another
process committed in between (Litestream does, to checkpoint: see README "Running a
replica"), SQLite cannot wait for it: the snapshot is stale, and the write fails at once
with "database is locked" whatever the busy timeout. ``BEGIN IMMEDIATE`` waits for the lock
(``busy_timeout``) instead, before anything is read. Nested uses are savepoints, as in
``atomic()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlite_utils


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:  # an error may have ended it already
            db.conn.execute("ROLLBACK")
        raise
    try:
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
