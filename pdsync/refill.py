"""Field definitions written, and readable custom-field columns refilled from the raw
``custom_fields`` JSON rows keep.

Most field definitions are fetched hourly (see plan.py), so records can arrive before the
definition of a field they use: their value waits in ``custom_fields``. When a definition
arrives or changes (a new field, a renamed option), its readable column is filled in for
every row that holds a value for it, in the same transaction as the definitions.
"""

from __future__ import annotations

import json
from typing import Any

import sqlite_utils

from .entities import EntitySpec, Row
from .records import CustomField, CustomFieldMap, assign_column_names
from .store import Store

_BATCH = 5000


def write_definitions(
    db: sqlite_utils.Database,
    store: Store,
    spec: EntitySpec,
    rows: list[Row],
    targets: list[EntitySpec],
) -> None:
    """Write the field definitions of ``targets`` (the entities whose custom fields they
    define): name their readable columns, add them, write the definitions, then fill the
    columns of records that came before their definitions."""
    before = CustomFieldMap.from_definitions(list(db[spec.name].rows))
    target = targets[0]
    # Columns the previous definitions gave custom fields are theirs to keep, not clashes.
    previous = before.columns()
    taken = set(target.table_columns) | (set(store.columns(target.name)) - set(previous))
    assign_column_names(rows, taken)
    store.ensure_columns(target.name, CustomFieldMap.from_definitions(rows).columns())
    store.upsert(spec, rows)
    after = CustomFieldMap.from_definitions(list(db[spec.name].rows))
    for each in targets:
        if each.name in db.table_names():
            refill(db, each, before, after)


def refill(
    db: sqlite_utils.Database, target: EntitySpec, before: CustomFieldMap, after: CustomFieldMap
) -> int:
    """Fill ``after``'s new or changed fields into ``target``'s rows; returns rows written.
    Entities without the raw JSON (leads send custom fields as top-level keys) are skipped."""
    if target.custom_at_top or "custom_fields" not in target.columns:
        return 0
    known = {f.code: (f.column, f.field_type, f.options) for f in before.fields}
    written = 0
    for f in after.fields:
        if known.get(f.code) != (f.column, f.field_type, f.options):
            written += _refill_field(db, target, f)
    return written


def _refill_field(db: sqlite_utils.Database, target: EntitySpec, f: CustomField) -> int:
    columns = list(f.columns())
    found = db.execute(
        f"select [{target.pk}], custom_fields from [{target.name}]"
        " where instr(custom_fields, ?) > 0",
        [json.dumps(f.code)],
    ).fetchall()
    updates: list[list[Any]] = []
    for key, raw in found:
        try:
            values = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if not isinstance(values, dict) or f.code not in values:
            continue
        row: dict[str, Any] = {}
        f.fill(row, values[f.code])
        updates.append([row.get(c) for c in columns] + [key])
    assignments = ", ".join(f"[{c}] = ?" for c in columns)
    sql = f"update [{target.name}] set {assignments} where [{target.pk}] = ?"
    for start in range(0, len(updates), _BATCH):
        db.conn.executemany(sql, updates[start : start + _BATCH])
    return len(updates)
