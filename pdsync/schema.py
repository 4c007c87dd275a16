"""The database's shape: sync bookkeeping tables (through migrations) and entity tables (from
the entity specs), applied by idempotent functions before every sync.

Migrations carry changes that need more than "add what is missing" (an older database's
bookkeeping, rewriting stored timestamps); ``ensure_entity_tables`` adds the tables, columns,
foreign keys and indexes the specs declare.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sqlite3
from collections.abc import Callable, Iterator
from urllib.parse import quote

import sqlite_utils
from sqlite_utils import Migrations

from . import unchanged
from .conversions import ensure_conversion_triggers
from .entities import EntitySpec
from .timestamps import normalize
from .totals import ensure_totals
from .transaction import write_transaction
from .views import ensure_fts, ensure_views, has_rows

migrations = Migrations("pdsync")

SYNC_METADATA_COLUMNS = {
    "entity_type": str,
    "last_sync_time": str,
    "last_sync_duration_ms": int,
    "records_synced": int,
    "records_total": int,
    "status": str,  # success, failed, in_progress
    "error_message": str,
}


@migrations()
def m001_sync_metadata(db: sqlite_utils.Database) -> None:
    # The original design's table, one row per entity; databases it made already have it.
    if "sync_metadata" not in db.table_names():
        db["sync_metadata"].create(SYNC_METADATA_COLUMNS, pk="entity_type")


@migrations()
def m002_incremental_state(db: sqlite_utils.Database) -> None:
    table = db["sync_metadata"]
    existing = set(table.columns_dict)
    added = {
        "watermark": str,  # largest update_time committed (smallest across the entity's streams)
        "last_success_time": str,  # when the last successful sync of this entity started
        "requests": int,
        "tokens": int,
        "full_pending": int,  # a full pass started and has not finished: resume it
    }
    for name, kind in added.items():
        if name not in existing:
            table.add_column(name, kind)
    db["sync_streams"].create(
        {"entity_type": str, "stream": str, "watermark": str, "updated_at": str},
        pk=("entity_type", "stream"),
        if_not_exists=True,
    )
    db["sync_runs"].create(
        {
            "id": int,
            "started_at": str,
            "finished_at": str,
            "duration_ms": int,
            "status": str,  # running, success, partial, failed, cancelled
            "mode": str,  # incremental or full
            "entities": str,
            "records_synced": int,
            "requests": int,
            "tokens": int,
            "errors": str,
            "pdsync_version": str,
        },
        pk="id",
        if_not_exists=True,
    )
    # Ids seen during a full pass, kept on disk so a resumed pass still reconciles and
    # 400k ids cost no memory.
    db.execute(
        "create table if not exists _pdsync_seen ("
        "entity_type text not null, id integer not null, primary key (entity_type, id)"
        ") without rowid"
    )


@migrations()
def m003_utc_timestamps(db: sqlite_utils.Database) -> None:
    # Older syncs stored v1's "2019-01-22 08:55:59"; every timestamp now has one shape.
    db.register_function(normalize, name="pdsync_normalize_ts", deterministic=True, replace=True)
    for name in db.table_names():
        if name.startswith(("_", "sync_", "sqlite_")) or name.endswith(("_fts",)):
            continue
        for column in db[name].columns_dict:
            if column.endswith("_time") or column in ("created", "modified", "last_login"):
                db.execute(
                    f"update [{name}] set [{column}] = pdsync_normalize_ts([{column}]) "
                    f"where [{column}] is not null and [{column}] not like '%Z'"
                )


@migrations()
def m004_rejected_records(db: sqlite_utils.Database) -> None:
    # Records Pipedrive sent that pdsync refused to store (no usable id, not an object).
    if "records_rejected" not in db["sync_metadata"].columns_dict:
        db["sync_metadata"].add_column("records_rejected", int)


@migrations()
def m005_deals_read_indexes(db: sqlite_utils.Database) -> None:
    # Replaced by wider indexes the canned queries can walk (see entities.py, deals).
    for name in ("idx_deals_status", "idx_deals_pipeline_id", "idx_deals_owner_id"):
        db.execute(f"drop index if exists [{name}]")


@migrations()
def m006_deals_owner_index(db: sqlite_utils.Database) -> None:
    # Replaced by one that also carries status and pipeline (see entities.py, deals).
    db.execute("drop index if exists [idx_deals_owner_id_update_time]")


@migrations()
def m007_deals_totals(db: sqlite_utils.Database) -> None:
    # The totals canned queries read open_deal_totals and open_deal_owner_totals (totals.py)
    # instead of these covering indexes of every open deal; open_expected_close is rebuilt
    # wider (see entities.py, deals).
    for name in (
        "open_expected_close_totals",
        "open_owner_totals",
        "open_stage_totals",
        "open_expected_close",
    ):
        db.execute(f"drop index if exists [idx_deals_{name}]")


@migrations()
def m008_warning_message(db: sqlite_utils.Database) -> None:
    # A run can succeed and still have refused records (bad ids, update_times in the future):
    # that is said here, so "success" never hides it.
    if "warning_message" not in db["sync_metadata"].columns_dict:
        db["sync_metadata"].add_column("warning_message", str)


@migrations()
def m009_daily_tokens(db: sqlite_utils.Database) -> None:
    # Pipedrive's token budget is per company and UTC day: what each day cost, and what for
    # (sync, full sync, ...), written with the pages that spent it. sync_runs.every_s is the
    # interval of the schedule a run belongs to (--every, or Datasette's sync_interval).
    db["sync_tokens"].create(
        {"day": str, "purpose": str, "requests": int, "tokens": int},
        pk=("day", "purpose"),
        if_not_exists=True,
    )
    if "every_s" not in db["sync_runs"].columns_dict:
        db["sync_runs"].add_column("every_s", float)


@migrations()
def m010_parents_asked(db: sqlite_utils.Database) -> None:
    # Per parent record (a deal), the update_time at which its children (line items) were
    # last fetched: a run asks again only for parents whose update_time moved.
    db.execute(
        "create table if not exists _pdsync_parents ("
        "entity_type text not null, parent_id integer not null, version text,"
        " primary key (entity_type, parent_id)) without rowid"
    )


@migrations()
def m011_deal_history(db: sqlite_utils.Database) -> None:
    # One row per change of a deal's field, observed by syncs or read from its changelog
    # (pdsync/history.py); which deals' changelogs are read, and the backfill's pause.
    db.execute(
        "create table if not exists deal_changes ("
        "id integer primary key, deal_id integer references deals(id), field_key text not null,"
        " old_value text, new_value text, time text, user_id integer references users(id),"
        " source text not null, change_source text)"
    )
    db.execute("create index if not exists idx_deal_changes_deal on deal_changes (deal_id, time)")
    # The stage path of every deal (deal_stage_history) walks the moves in this order.
    db.execute(
        "create index if not exists idx_deal_changes_field on deal_changes"
        " (field_key, deal_id, time)"
    )
    db.execute(
        "create table if not exists _pdsync_history ("
        "deal_id integer primary key, read_at text, reread integer not null default 0)"
    )
    db["sync_history"].create(
        {"id": int, "paused_until": str, "last_run_at": str, "last_error": str, "budget": int},
        pk="id",
        if_not_exists=True,
    )


@migrations()
def m015_projects(db: sqlite_utils.Database) -> None:
    # Deals are now asked with include_fields=products_count,source_lead_id (conversions.py):
    # the deal streams keep their watermarks under the new key, instead of a full refetch.
    if "sync_streams" not in db.table_names():
        return
    old = "include_fields=products_count"
    db.execute(
        "update sync_streams set stream = stream || ',source_lead_id'"
        " where entity_type = 'deals' and stream like ?",
        [f"%{old}"],
    )


@migrations()
def m016_history_failures(db: sqlite_utils.Database) -> None:
    # A deal whose changelog keeps failing is tried again less eagerly, then given up on
    # (backfill.py): how often it failed, when last, and why.
    if "_pdsync_history" not in db.table_names():
        return
    columns = db["_pdsync_history"].columns_dict
    for name, kind in (
        ("failures", "integer not null default 0"),
        ("failed_at", "text"),
        ("last_error", "text"),
    ):
        if name not in columns:
            db.execute(f"alter table _pdsync_history add column {name} {kind}")


@migrations()
def m017_history_long_changelogs(db: sqlite_utils.Database) -> None:
    # The client took pages of id-less changelog entries for one page come back, so every
    # deal with more than two pages of changes failed, then was given up on: try them again.
    if "_pdsync_history" not in db.table_names():
        return
    db.execute(
        "update _pdsync_history set failures = 0, failed_at = null, last_error = null"
        " where last_error like '%the same page came back%'"
    )


@migrations()
def m018_digests(db: sqlite_utils.Database) -> None:
    # What each row was written from, to skip records stored as they are (unchanged.py).
    unchanged.create_table(db)


@migrations()
def m019_state(db: sqlite_utils.Database) -> None:
    # The schema as the last run left it: a change since voids the digests (unchanged.py).
    unchanged.create_state_table(db)


def ensure_entity_tables(db: sqlite_utils.Database, entities: list[EntitySpec]) -> None:
    """Create what the specs declare and is missing. Safe to run on every sync."""
    # Listed once, not per foreign key and table: every run comes here (a no-change sync
    # asked sqlite_master ~400 times, a tenth of its time after imports).
    tables = set(db.table_names())
    for spec in entities:
        table = db.table(spec.name)
        fks = [fk for fk in spec.foreign_keys if fk[1] in tables or fk[1] == spec.name]
        if spec.name not in tables:
            table.create(spec.table_columns, pk=spec.pk, foreign_keys=fks)
            tables.add(spec.name)
        else:
            existing = set(table.columns_dict)
            for name, kind in spec.table_columns.items():
                if name not in existing:
                    table.add_column(name, kind)
                    unchanged.forget(db, spec.name)
            declared = {(fk.column, fk.other_table) for fk in table.foreign_keys}
            missing = [fk for fk in fks if (fk[0], fk[1]) not in declared]
            if missing:
                # Rebuilds the table once, for databases made before the key was declared.
                db.add_foreign_keys([(spec.name, *fk) for fk in missing])
        if has_rows(db, spec.name):
            ensure_indexes(db, spec)
        else:
            # Empty until the first load, but there to be queried.
            ensure_fts(db, spec.name)
            ensure_totals(db, spec.name)
            _index_parent_column(db, spec)
    ensure_conversion_triggers(db)


def _index_parent_column(db: sqlite_utils.Database, spec: EntitySpec) -> None:
    """A list asked per parent deletes each batch's other children by parent id
    (Store.replace_children): without an index leading with that column, each batch of a
    first load scans every row loaded before it (measured: 9 % of a 100k-deal first sync,
    growing with the square of the account). Made on the empty table, it is kept up as
    the rows go in (parents are asked in id order: mostly appends); the other indexes
    still wait for the load."""
    columns = {s.children.column for s in spec.streams if s.children is not None}
    existing = index_names(db, spec.name)
    for index in spec.indexes:
        if index[0] in columns and _index_name(spec, index) not in existing:
            db[spec.name].create_index(index, if_not_exists=True, find_unique_name=False)


def ensure_indexes(db: sqlite_utils.Database, spec: EntitySpec) -> None:
    """Create the read paths: indexes, full-text search and totals. An empty table gets them
    after its first load instead: building an index once is far cheaper than updating it per
    insert."""
    existing = index_names(db, spec.name)  # every run gets here: asking is cheaper than making
    for columns in spec.indexes:
        if _index_name(spec, columns) not in existing:
            db[spec.name].create_index(columns, if_not_exists=True, find_unique_name=False)
    for name, expression in spec.expression_indexes.items():
        if f"idx_{spec.name}_{name}" not in existing:
            db.execute(
                f"create index if not exists [idx_{spec.name}_{name}] on [{spec.name}]"
                f" ({expression})"
            )
    for name, (columns, where) in spec.partial_indexes.items():
        if f"idx_{spec.name}_{name}" not in existing:
            db.execute(
                f"create index if not exists [idx_{spec.name}_{name}] on [{spec.name}]"
                f" ({columns}) where {where}"
            )
    ensure_fts(db, spec.name)
    ensure_totals(db, spec.name)


def add_columns(db: sqlite_utils.Database, table: str, columns: dict[str, type]) -> list[str]:
    """Add the columns ``table`` lacks; returns the names added."""
    existing = set(db[table].columns_dict)
    added = []
    for name, kind in columns.items():
        if name not in existing:
            db[table].add_column(name, kind)
            added.append(name)
    return added


def prepare(db: sqlite_utils.Database, entities: list[EntitySpec]) -> None:
    """Everything a sync needs before it writes: WAL, migrations, entity tables."""
    if db.journal_mode != "wal" and database_path(db):
        db.enable_wal()  # readers (Datasette) never wait for the writer
    # In WAL mode NORMAL keeps every commit safe from a crashed or killed process; only a
    # power cut can lose the last commits (never corrupt the file), which the next run
    # fetches again. FULL would fsync on every page.
    db.execute("pragma synchronous = normal")
    # Wait up to 5 s for the write lock rather than fail: Litestream, when it replicates the
    # file, takes it briefly to checkpoint (its documented requirement; Python's default too).
    db.execute("pragma busy_timeout = 5000")
    # Checkpoint every ~32 MB rather than every 4 MB: each checkpoint costs two fsyncs, which
    # on a virtual disk took longer than writing the pages. The WAL is kept at that size.
    db.execute("pragma wal_autocheckpoint = 8192")
    db.execute("pragma journal_size_limit = 33554432")
    # 16 MB of page cache (default 2 MB): inserts sorted by update_time land at random ids,
    # and a cache that holds the upper B-tree levels made them a quarter faster.
    db.execute("pragma cache_size = -16000")
    # One commit, so one schema change for readers of a database served before its first
    # sync (see pacing.GAP), and a new database appears whole or not at all.
    with write_transaction(db):
        unchanged.check_schema(db)  # before this run's own changes
        migrations.apply(db)
        ensure_entity_tables(db, entities)
        unchanged.ensure(db, entities)
        ensure_views(db)


class ForeignDatabase(Exception):
    """The file is another application's SQLite database: pdsync does not write to it."""


def is_pdsync(names: set[str]) -> bool:
    """Tables (and views) of a database pdsync made, or the original design's."""
    return "sync_metadata" in names


def is_pdsync_file(path: str | None) -> bool:
    """The SQLite file at ``path`` is a pdsync database (read-only; False if it is none)."""
    return is_pdsync(table_names(path))


def database_path(db: sqlite_utils.Database) -> str | None:
    """The file behind ``db``, or None for an in-memory database."""
    return db.conn.execute("pragma database_list").fetchone()[2] or None


def check_ours(db: sqlite_utils.Database, label: str) -> None:
    """Raise ``ForeignDatabase`` unless ``db`` is pdsync's or empty. Reads only: called before
    the first write, so another application's file keeps its tables and journal mode."""
    names = {
        r[0]
        for r in db.conn.execute("select name from sqlite_master where name not like 'sqlite_%'")
    }
    # A table called sync_metadata is a common enough name: pdsync's has entity_type.
    ours = is_pdsync(names) and any(
        r[1] == "entity_type" for r in db.conn.execute("pragma table_info(sync_metadata)")
    )
    if names and not ours:
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise ForeignDatabase(
            f"{label} is not a pdsync database (it has {shown} but no sync_metadata); "
            "pdsync writes only to a new file or one it made"
        )


def table_names(path: str | None) -> set[str]:
    """Tables and views of the SQLite file at ``path``, read-only; empty if it is not one."""
    if not path:
        return set()
    try:
        with _read_only(path) as conn:
            return {r[0] for r in conn.execute("select name from sqlite_master")}
    except sqlite3.Error:
        return set()


def pending_upgrades(path: str) -> list[str]:
    """Migrations a pdsync database at ``path`` still needs (the next sync applies them), read
    without writing. Empty for a database pdsync has not synced."""
    with _read_only(path) as conn:
        db = sqlite_utils.Database(conn)
        if not is_pdsync(set(db.table_names())):
            return []
        return [m.name for m in migrations.pending(db)]


def check_database(path: str) -> None:
    """Raise ``sqlite3.DatabaseError`` if ``path`` exists and is not a SQLite database."""
    with _read_only(path) as conn:
        conn.execute("pragma schema_version").fetchone()


def read_only_uri(path: str, immutable: bool = False) -> str:
    """A ``file:`` URI for ``path`` that SQLite opens read-only. The path is percent-encoded:
    a ``#``, ``?`` or ``%`` in it would otherwise cut it short or be read as a parameter."""
    mode = "immutable=1" if immutable else "mode=ro"
    return f"file:{quote(os.path.abspath(path))}?{mode}"


def connect_read_only(path: str, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to ``path``. In a directory SQLite cannot write, where it cannot
    make a WAL database's -shm file and ``mode=ro`` fails, the file is read as immutable: a
    snapshot, which is all that can be read there. ``timeout``: how long a statement waits
    for a writer's lock (0: not at all, "database is locked" at once)."""
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True, timeout=timeout)
        conn.execute("select count(*) from sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        if not _in_read_only_directory(path):
            raise
    return sqlite3.connect(read_only_uri(path, immutable=True), uri=True, timeout=timeout)


def readable_only_as_snapshot(path: str) -> bool:
    """True when ``mode=ro`` cannot open ``path`` because its directory is read-only (SQLite
    cannot make a WAL database's -shm file there): only ``immutable`` reads it, as a snapshot."""
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True)
        try:
            conn.execute("select count(*) from sqlite_master").fetchone()
        finally:
            conn.close()
        return False
    except sqlite3.OperationalError:
        return _in_read_only_directory(path)


def _in_read_only_directory(path: str) -> bool:
    return not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)


@contextlib.contextmanager
def _read_only(path: str) -> Iterator[sqlite3.Connection]:
    conn = connect_read_only(path)
    try:
        yield conn
    finally:
        conn.close()


def index_steps(db: sqlite_utils.Database, spec: EntitySpec) -> list[Callable[[], None]]:
    """``ensure_indexes(db, spec)`` split into one step per missing index, then the rest
    (full-text, totals)."""
    existing = index_names(db, spec.name)
    bare = dataclasses.replace(spec, indexes=(), expression_indexes={}, partial_indexes={})
    one = [
        dataclasses.replace(bare, indexes=(columns,))
        for columns in spec.indexes
        if _index_name(spec, columns) not in existing
    ]
    one += [
        dataclasses.replace(bare, expression_indexes={name: expression})
        for name, expression in spec.expression_indexes.items()
        if f"idx_{spec.name}_{name}" not in existing
    ]
    one += [
        dataclasses.replace(bare, partial_indexes={name: index})
        for name, index in spec.partial_indexes.items()
        if f"idx_{spec.name}_{name}" not in existing
    ]
    return [functools.partial(ensure_indexes, db, part) for part in [*one, spec]]


def index_names(db: sqlite_utils.Database, table: str) -> set[str]:
    return {
        r[0]
        for r in db.execute(
            "select name from sqlite_master where type = 'index' and tbl_name = ?", [table]
        )
    }


def _index_name(spec: EntitySpec, columns: tuple[str, ...]) -> str:
    return f"idx_{spec.name.replace(' ', '_')}_{'_'.join(columns)}"  # sqlite-utils' name
