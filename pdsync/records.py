"""Turning Pipedrive records into rows: timestamps, JSON, booleans and readable custom fields."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from .entities import EntitySpec, Row
from .timestamps import normalize

# v1 users name their timestamps differently; everything else ends in _time, except an
# activity's due_time, which is a time of day.
_V1_TIMESTAMPS = frozenset({"created", "modified", "last_login"})
_TIMES_OF_DAY = frozenset({"due_time"})


class BadRecord(ValueError):
    """A record pdsync will not store (and says why), instead of storing it wrong."""


def to_row(spec: EntitySpec, record: Any, custom: CustomFieldMap | None = None) -> Row:
    if not isinstance(record, dict):
        raise BadRecord(f"{spec.name}: expected an object, got {type(record).__name__}")
    key = record.get(spec.pk)
    if key is None or isinstance(key, (bool, dict, list)):
        raise BadRecord(f"{spec.name}: record without a usable {spec.pk}: {str(record)[:80]}")
    # Every declared column gets a value: Pipedrive leaves out some empty fields (a won
    # deal has no lost_time), and an absent key must clear what an older version stored.
    row: Row = dict.fromkeys(spec.columns)
    for name, value in record.items():
        if name in spec.drop:
            continue
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        elif isinstance(value, str) and (
            (name.endswith("_time") and name not in _TIMES_OF_DAY) or name in _V1_TIMESTAMPS
        ):
            value = normalize(value)
        row[name] = value
    if custom is not None:
        values = record.get("custom_fields")
        row.update(custom.readable(values if isinstance(values, dict) else {}))
    if spec.transform is not None:
        spec.transform(row, record)
    return row


def slug(name: str) -> str:
    """A column name people can type in SQL: 'PO Number (SAR)' -> 'po_number_sar'."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()
    if not text:
        text = "field"
    return f"f_{text}" if text[0].isdigit() else text


# How each Pipedrive field_type becomes columns: (suffix, type) pairs after the base name.
_NUMERIC = {"double": float, "monetary": float, "int": int}
_SECOND_COLUMN = {"monetary": "currency", "daterange": "until", "timerange": "until"}


@dataclass(frozen=True)
class CustomField:
    code: str
    column: str
    field_type: str
    options: dict[Any, str]

    def columns(self) -> dict[str, type]:
        cols = {self.column: _NUMERIC.get(self.field_type, str)}
        second = _SECOND_COLUMN.get(self.field_type)
        if second:
            cols[f"{self.column}_{second}"] = str
        return cols

    def readable(self, value: Any) -> Row:
        second = _SECOND_COLUMN.get(self.field_type)
        out: Row = {name: None for name in self.columns()}
        if value is None:
            return out
        if self.field_type == "enum":
            out[self.column] = self.options.get(value, str(value))
        elif self.field_type == "set":
            ids = value if isinstance(value, list) else [value]
            labels = [self.options.get(i, str(i)) for i in ids]
            out[self.column] = json.dumps(labels, ensure_ascii=False)
        elif isinstance(value, dict):
            out[self.column] = value.get("value")
            if second:
                out[f"{self.column}_{second}"] = value.get(second)
            elif self.field_type not in ("address",) and "value" not in value:
                out[self.column] = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, list):
            out[self.column] = json.dumps(value, ensure_ascii=False)
        else:
            out[self.column] = value
        return out


class CustomFieldMap:
    """The custom fields of one entity, from its field definitions table."""

    def __init__(self, fields: list[CustomField]) -> None:
        self.fields = fields

    def columns(self) -> dict[str, type]:
        cols: dict[str, type] = {}
        for f in self.fields:
            cols.update(f.columns())
        return cols

    def readable(self, values: dict) -> Row:
        row: Row = {}
        for f in self.fields:
            row.update(f.readable(values.get(f.code)))
        return row

    @classmethod
    def from_definitions(cls, definitions: list[dict]) -> CustomFieldMap:
        fields = []
        for d in definitions:
            if not d.get("is_custom_field") or d.get("is_deleted") or not d.get("column_name"):
                continue
            options = d.get("options") or []
            if isinstance(options, str):
                options = json.loads(options)
            fields.append(
                CustomField(
                    code=d["field_code"],
                    column=d["column_name"],
                    field_type=d.get("field_type") or "varchar",
                    options={o.get("id"): o.get("label") for o in options if isinstance(o, dict)},
                )
            )
        return cls(fields)


def assign_column_names(definitions: list[dict], taken: set[str]) -> None:
    """Give each custom field definition a readable ``column_name``, stable across runs.

    A name that collides with a built-in column or another field gets the start of the
    field's hash appended, so two runs never swap two fields' columns.
    """
    slugs: dict[str, int] = {}
    for d in definitions:
        if d.get("is_custom_field"):
            name = slug(d.get("field_name") or d["field_code"])
            slugs[name] = slugs.get(name, 0) + 1
    for d in definitions:
        if not d.get("is_custom_field"):
            d["column_name"] = None
            continue
        name = slug(d.get("field_name") or d["field_code"])
        second = _SECOND_COLUMN.get(d.get("field_type") or "")
        clash = name in taken or (second and f"{name}_{second}" in taken) or slugs[name] > 1
        d["column_name"] = f"{name}_{d['field_code'][:6]}" if clash else name
