"""Records that did not change since the sync stored them: known without writing them again.

A full pass (``--full``, a paced pass, line items asked of every deal) reads every record,
nearly all stored as they are. Turning each into a row and binding its ~40 values for an
upsert that then finds nothing to write cost as much as fetching and parsing the page
(issue #18). So a full pass keeps, per row it writes, a digest of the record it wrote it
from (``_pdsync_digests``, WITHOUT ROWID; not a column of the user's tables), and a record
whose digest matches is only counted and marked seen: no row, no upsert, no children
rewritten. A first load and incremental runs neither read nor write digests (on a first
load they cost 15 % of its CPU, and an incremental run reads few records twice): the next
full pass fills what is missing.

The digest covers the record as received (after a plugin's ``transform_record``: what
``to_row`` reads) and a key of everything else that shapes its row: the entity's declared
columns and its table's columns and CREATE TABLE text now, the code (functions, defaults,
constants) of ``records.py``, ``timestamps.py``, the entity's transform and its module,
pdsync's version and the entity's custom-field definitions. A new custom field, or
another pdsync, makes every digest stale: the next pass makes each row once more. An
entity a plugin shapes with its own transform gets no digests (``applies``).

A digest is only true while nobody else wrote its row: triggers on each table that has
digests (after insert, update and delete, whoever writes: the webhook applier,
``mark_gone``, a refill, a migration, an incremental run, a user's own UPDATE) delete the
row's digest, and a full pass writes it again after its own upsert, in the same
transaction, only where the row now holds the record's version (``Store.save_digests``: the
update_time guard may have kept a newer one). Triggers that were missing (a new database,
a table rebuilt, which drops its triggers, or renamed away, which takes them along) are
made with the entity's digests deleted: none can describe a row written without them.
Nor does DDL fire a trigger: a schema other than the one the last run left
(``check_schema``, against ``note_schema``'s ``PRAGMA schema_version``) voids every digest.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson
import sqlite_utils

from . import __version__, records, timestamps
from .entities import EntitySpec
from .records import CustomFieldMap

if TYPE_CHECKING:
    from .store import Store

TABLE = "_pdsync_digests"
STATE = "_pdsync_state"  # the schema version the last run left (check_schema)
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# Per trigger: the ids whose digest it deletes (an UPDATE may change the id itself).
_ROW_IDS = {"insert": "new.[{0}]", "update": "old.[{0}], new.[{0}]", "delete": "old.[{0}]"}


def applies(spec: EntitySpec) -> bool:
    """Entities whose records are read again unchanged (incremental lists, children), with
    integer ids (what the digests table keys), shaped by pdsync's own code. A plugin's
    entity transform may depend on what no key can see (a closure's setting, a helper it
    calls, upgraded without a new pdsync): its rows are always written again."""
    shaped_here = spec.transform is None or _own(spec)
    return (spec.incremental or spec.dependent) and spec.columns.get(spec.pk) is int and shaped_here


def _own(spec: EntitySpec) -> bool:
    """Its transform is a plain function of pdsync's (no closure), in a loaded module."""
    module = getattr(spec.transform, "__module__", None) or ""
    if getattr(spec.transform, "__closure__", None) is not None or module not in sys.modules:
        return False
    return module == "pdsync" or module.startswith("pdsync.")


def key(
    spec: EntitySpec, custom: CustomFieldMap | None, table: Iterable[str] = (), schema: str = ""
) -> bytes:
    """What shapes ``spec``'s rows besides the record: a digest made under another key
    never matches. ``table``: the table's columns now; ``schema``: its CREATE TABLE text.
    A column made from a key no spec declares, dropped by a user, only comes back with a
    row made again: without them here every record would be skipped and it would stay
    gone. Nor does a column a user dropped and added again (SQLite's way to change its
    type) fill itself, and DDL fires no trigger: it moves the column last, or at least
    rewrites its text, in the schema."""
    parts: list[Any] = [
        __version__,
        sorted(table),
        schema,
        spec.name,
        spec.pk,
        sorted((name, kind.__name__) for name, kind in spec.columns.items()),
        spec.drop,
        spec.custom_at_top,
        _module_code(records),
        _module_code(timestamps),
        _code(spec.transform),
        # the transform's module: the helpers it calls (pdsync's own, see applies())
        _module_code(sys.modules[spec.transform.__module__]) if _own(spec) else None,
    ]
    if custom is not None:
        parts.append(
            [
                (f.code, f.column, f.field_type, sorted(map(repr, f.options.items())))
                for f in custom.fields
            ]
        )
    return hashlib.blake2b(repr(parts).encode(), digest_size=32).digest()


def _code(function: Any) -> str:
    """A fingerprint of ``function``'s code and default arguments (which live beside its
    code object), the same in every process (a code object's repr holds its address)."""
    code = getattr(function, "__code__", None)
    if code is None:
        return repr(function)
    defaults = [*(getattr(function, "__defaults__", None) or ())]
    defaults += sorted((getattr(function, "__kwdefaults__", None) or {}).items())
    data = _code_bytes(code) + repr([_constant(d) for d in defaults]).encode()
    return hashlib.blake2b(data).hexdigest()


# Module values that are rules, not state: a dict or list at module level may be a cache
# (records._STAMPS), filled differently in each process. A rule that shapes rows is one of
# these (a frozenset, a tuple, a compiled pattern...), or a MappingProxyType.
_CONSTANTS = (str, bytes, int, float, type(None), frozenset, tuple, timedelta, re.Pattern)


def _constant(value: Any) -> str | None:
    """``value``'s text, the same in every process, if it is a constant; else None."""
    if isinstance(value, (frozenset, set)):  # str hashes, so the order, vary per process
        return repr(sorted(_constant(v) or type(v).__name__ for v in value))
    if isinstance(value, (tuple, list)):
        return repr([_constant(v) or type(v).__name__ for v in value])
    if isinstance(value, MappingProxyType):
        return repr(sorted((repr(k), _constant(v) or type(v).__name__) for k, v in value.items()))
    if hasattr(value, "__code__"):
        return _code(value)
    if isinstance(value, type):  # a column's type (records._NUMERIC)
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, re.Pattern):  # its repr cuts the pattern at 200 characters
        return repr((value.pattern, value.flags))
    return repr(value) if isinstance(value, _CONSTANTS) else None


@functools.cache
def _module_code(module: Any) -> str:
    """A fingerprint of the code of a module's functions and classes' methods, and of its
    constants (a function's code names a constant, not its value)."""
    found = []
    for name, value in sorted(vars(module).items()):
        if getattr(value, "__module__", None) != module.__name__:
            if not name.startswith("__") and isinstance(value, (*_CONSTANTS, MappingProxyType)):
                found.append((name, _constant(value)))
            continue
        if isinstance(value, type):
            methods = sorted(vars(value).items())
            found += [(f"{name}.{n}", _code(v)) for n, v in methods if hasattr(v, "__code__")]
        elif hasattr(value, "__code__"):
            found.append((name, _code(value)))
    return repr(found)


def _code_bytes(code: Any) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        parts.append(_code_bytes(const) if hasattr(const, "co_code") else repr(const).encode())
    return b"\0".join(parts)


def forget(db: sqlite_utils.Database, entity: str) -> None:
    """A column was added to ``entity``'s table: its rows may lack what their records hold
    (a column a user dropped, made again empty), so no digest of them stands."""
    db.execute(f"delete from {TABLE} where entity_type = ?", [entity])


def digest(run_key: bytes, record: Any) -> bytes | None:
    """The record's digest under ``run_key``; None for one orjson cannot write (never
    skipped)."""
    try:
        data = orjson.dumps(record)
    except TypeError:
        return None
    return hashlib.blake2b(data, digest_size=16, key=run_key).digest()


def create_table(db: sqlite_utils.Database) -> None:
    db.execute(
        f"create table if not exists {TABLE} (entity_type text not null,"
        " id integer not null, digest blob not null, primary key (entity_type, id))"
        " without rowid"
    )


def create_state_table(db: sqlite_utils.Database) -> None:
    db.execute(f"create table if not exists {STATE} (name text primary key, value) without rowid")


def check_schema(db: sqlite_utils.Database) -> None:
    """Forget every digest if the schema changed since the last run ended (``note_schema``),
    before this run changes it (in the caller's transaction). DDL fires no trigger, and a
    column a user dropped and added again as it was leaves even the table's text as it was,
    its values gone. A change that was not a user's (Litestream's tables, a plugin's after a
    run, a user's ANALYZE) costs the next full pass making each row again, no more (the
    upsert still writes none that is stored as it is)."""
    tables = set(db.table_names())
    if TABLE not in tables:
        return
    noted = None
    if STATE in tables:
        sql = f"select value from {STATE} where name = 'schema_version'"
        noted = db.execute(sql).fetchone()
    if noted is None or noted[0] != _schema_version(db):
        db.execute(f"delete from {TABLE}")


def note_schema(db: sqlite_utils.Database) -> None:
    """The schema as this run leaves it, every change of pdsync's own made."""
    db.execute(
        f"insert or replace into {STATE} (name, value) values ('schema_version', ?)",
        [_schema_version(db)],
    )


def _schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("pragma schema_version").fetchone()[0]


def ensure(db: sqlite_utils.Database, entities: list[EntitySpec]) -> None:
    """Each table's triggers (in the caller's transaction)."""
    # By name and table: a table renamed away (ALTER TABLE ... RENAME) takes its triggers,
    # names and all, and the table made again in its place has none.
    made = set(db.execute("select name, tbl_name from sqlite_master where type = 'trigger'"))
    for spec in entities:
        if not applies(spec):
            continue
        names = [f"_pdsync_digest_{event}_{spec.name}" for event in _ROW_IDS]
        if all((name, spec.name) in made for name in names):
            continue
        forget(db, spec.name)
        for event, name in zip(_ROW_IDS, names, strict=True):
            db.execute(f"drop trigger if exists [{name}]")
            db.execute(
                f"create trigger [{name}] after {event} on [{spec.name}] begin"
                f" delete from {TABLE} where entity_type = '{spec.name}'"
                f" and id in ({_ROW_IDS[event].format(spec.pk)}); end"
            )


def sort(
    store: Store, spec: EntitySpec, run_key: bytes, records: list
) -> tuple[list, list[bytes | None], list[dict]]:
    """``records`` to turn into rows, with their digests (None: not known); and those stored
    as they are, whose rows the sync leaves alone."""
    digests = [digest(run_key, record) for record in records]
    ids = [r.get(spec.pk) for r in records if type(r) is dict and type(r.get(spec.pk)) is int]
    ids = [i for i in ids if _INT_MIN <= i <= _INT_MAX]  # SQLite's; to_row refuses the others
    stored = store.digests(spec, ids)
    if not stored:
        return records, digests, []
    if len(ids) != len(set(ids)):  # an id twice in a page ends with its last version
        twice = {i for i, n in Counter(ids).items() if n > 1}
        stored = {i: d for i, d in stored.items() if i not in twice}
    changed: list = []
    changed_digests: list[bytes | None] = []
    same: list[dict] = []
    for record, known in zip(records, digests, strict=True):
        if known is not None and type(record) is dict and stored.get(record.get(spec.pk)) == known:
            same.append(record)
        else:
            changed.append(record)
            changed_digests.append(known)
    return changed, changed_digests, same
