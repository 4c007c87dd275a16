"""Turning Pipedrive records into rows: timestamps, JSON, booleans and readable custom fields."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from .entities import EntitySpec, Row
from .timestamps import is_stored_shape, normalize

# v1 users name their timestamps differently; everything else ends in _time, except an
# activity's due_time, which is a time of day.
_V1_TIMESTAMPS = frozenset({"created", "modified", "last_login"})
_TIMES_OF_DAY = frozenset({"due_time"})
# A custom field's key, and v1's second keys of one (a monetary field's "<hash>_currency").
_HASH_KEY = re.compile(r"^[0-9a-f]{40}(_[a-z_]+)?$")


_std_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _json(value: Any) -> str:
    """Compact UTF-8 JSON text. orjson is 5x faster on the nested objects every deal has."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # keys that are not strings, integers beyond 64 bits
        return _std_json(value)


def _is_timestamp(name: str) -> bool:
    return (name.endswith("_time") and name not in _TIMES_OF_DAY) or name in _V1_TIMESTAMPS


# _is_timestamp per key name, as to_row meets them (a plain dict: cheaper than lru_cache).
# Bounded: past this many names (a hostile upstream inventing keys) it stops remembering.
_STAMPS: dict[str, bool] = {}
_STAMPS_KEPT = 4096


class BadRecord(ValueError):
    """A record pdsync will not store (and says why), instead of storing it wrong. ``key`` is
    its id when it has a usable one (a full pass must not take it for gone)."""

    def __init__(self, message: str, key: Any = None) -> None:
        super().__init__(message)
        self.key = key


# SQLite's integers; orjson reads up to 2**64 - 1, which would fail the page's insert.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def to_row(
    spec: EntitySpec,
    record: Any,
    custom: CustomFieldMap | None = None,
    latest: str | None = None,
) -> Row:
    """The row for ``record``. With ``latest`` (an incremental stream's page), an
    ``update_time`` that is not a timestamp or is later than ``latest`` is refused: it would
    move the stream's watermark past every real change."""
    if not isinstance(record, dict):
        raise BadRecord(f"{spec.name}: expected an object, got {type(record).__name__}")
    key = _usable_key(spec, record.get(spec.pk))
    if key is None:
        raise BadRecord(
            f"{spec.name}: record without a usable {spec.pk} "
            f"({excerpt(repr(record.get(spec.pk)), 40)}): {excerpt(str(record), 80)}"
        )
    # Every declared column gets a value: Pipedrive leaves out some empty fields (a won
    # deal has no lost_time), and an absent key must clear what an older version stored.
    row: Row = dict.fromkeys(spec.columns)
    drop = spec.drop
    stamps = _STAMPS
    # The writer runs this for every record: the common cases come first and stay inline
    # (a third of its cost went to calls: a cached lookup per key, normalize per timestamp).
    for name, value in record.items():
        kind = type(value)
        if kind is str:
            stamp = stamps.get(name)
            if stamp is None:
                stamp = _is_timestamp(name)
                if len(stamps) < _STAMPS_KEPT:
                    stamps[name] = stamp
            # v2's own shape, 2025-01-15T10:30:00Z, is already the stored one
            if stamp and not (len(value) == 20 and value[10] == "T" and value[19] == "Z"):
                value = normalize(value)
        elif kind is int:
            if not _INT_MIN <= value <= _INT_MAX:
                value = str(value)  # kept as sent, as text
        elif value is None:
            pass
        elif kind is bool:
            value = int(value)
        elif kind is dict or kind is list:
            value = _json(value)
        row[name] = value
    for name in drop:
        row.pop(name, None)
    if spec.custom_at_top:
        for name in [n for n in row if _HASH_KEY.match(n)]:
            del row[name]  # readable columns come from the field definitions below
    row[spec.pk] = key
    if latest is not None:
        _check_update_time(spec, key, row.get("update_time"), latest)
    try:
        if custom is not None:
            values = _top_level(record) if spec.custom_at_top else record.get("custom_fields")
            row.update(custom.readable(values if isinstance(values, dict) else {}))
        if spec.transform is not None:
            spec.transform(row, record)
    except Exception as exc:  # a shape no field type expects: refuse the record, not the page
        raise BadRecord(f"{spec.name} {key}: {type(exc).__name__}: {exc}", key) from None
    return row


def stored_time(value: Any) -> Any:
    """A record's timestamp as ``to_row`` stores it."""
    if type(value) is not str or (len(value) == 20 and value[10] == "T" and value[19] == "Z"):
        return value
    return normalize(value)


def _top_level(record: dict) -> dict:
    """Custom fields sent as top-level keys, v1's way: ``<hash>`` and, for a monetary field,
    ``<hash>_currency`` become v2's ``{value, currency}``."""
    values = {}
    for name, value in record.items():
        if len(name) == 40 and _HASH_KEY.match(name):
            currency = record.get(f"{name}_currency")
            values[name] = value if currency is None else {"value": value, "currency": currency}
    return values


def excerpt(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, never inside a word: a cut through an API
    token (which a broken upstream may echo) would leave a part no redaction recognises."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: len(cut) - len(re.search(r"[\w-]*$", cut).group())] + "..."


def _usable_key(spec: EntitySpec, key: Any) -> Any:
    """The record's key as the table stores it, or None. An integer key sent as text
    (``"42"``) is taken as the integer; other text in an integer key would fail the page."""
    if key is None or isinstance(key, (bool, dict, list, float)):
        return None
    if spec.columns.get(spec.pk) is int:
        if isinstance(key, str) and key.isascii() and key.isdigit():
            key = int(key)
        if not isinstance(key, int) or not -(2**63) <= key < 2**63:
            return None
    elif isinstance(key, str) and not key.strip():
        return None
    return key


def _check_update_time(spec: EntitySpec, key: Any, value: Any, latest: str) -> None:
    if value is None:
        return  # stored, but moves no watermark
    if not is_stored_shape(value):
        raise BadRecord(
            f"{spec.name} {key}: update_time {excerpt(repr(value), 40)} is not a timestamp;"
            " not stored",
            key,
        )
    if value > latest:
        raise BadRecord(
            f"{spec.name} {key}: update_time {value} is in the future; not stored (it would"
            " hide every later change)",
            key,
        )


def slug(name: str) -> str:
    """A column name people can type in SQL: 'PO Number (SAR)' -> 'po_number_sar'."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()
    if not text:
        text = "field"
    return f"f_{text}" if text[0].isdigit() else text


# How each Pipedrive field_type becomes columns: (suffix, type) pairs after the base name.
# Read-only mappings: rules that shape rows, so in the digests' key (unchanged.py).
_NUMERIC = MappingProxyType({"double": float, "monetary": float, "int": int})
_SECOND_COLUMN = MappingProxyType(
    {"monetary": "currency", "daterange": "until", "timerange": "until"}
)


@dataclass(frozen=True)
class CustomField:
    code: str
    column: str
    field_type: str
    options: dict[Any, str]
    second: str | None = field(init=False, default=None)  # "currency", "until" or None

    def __post_init__(self) -> None:
        second = _SECOND_COLUMN.get(self.field_type)
        object.__setattr__(self, "second", f"{self.column}_{second}" if second else None)

    def columns(self) -> dict[str, type]:
        cols = {self.column: _NUMERIC.get(self.field_type, str)}
        if self.second:
            cols[self.second] = str
        return cols

    def fill(self, row: Row, value: Any) -> None:
        """Write this field's readable column(s) into ``row``."""
        second = None
        if value is None:
            pass
        elif self.field_type == "enum":
            value = self.options.get(value, str(value))
        elif self.field_type == "set":
            ids = value if type(value) is list else [value]
            value = _json([self.options.get(i, str(i)) for i in ids])
        elif type(value) is dict:
            if self.second:
                second = value.get(self.second[len(self.column) + 1 :])
                value = value.get("value")
            elif "value" in value:
                value = value.get("value")
            else:
                value = _json(value)
        elif type(value) is list:
            value = _json(value)
        row[self.column] = value
        if self.second:
            row[self.second] = second


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
            f.fill(row, values.get(f.code))
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
