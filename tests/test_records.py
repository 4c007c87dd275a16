"""Record -> row: timestamps, JSON, custom fields. Pure functions, no HTTP."""

import json
from datetime import datetime, timezone

import pytest

from pdsync.entities import by_name
from pdsync.records import BadRecord, CustomFieldMap, assign_column_names, slug, to_row
from pdsync.timestamps import FORMAT, normalize, parse


@pytest.mark.parametrize(
    "raw, stored",
    [
        ("2025-01-15T10:30:00Z", "2025-01-15T10:30:00Z"),
        ("2025-01-15T10:30:00.123Z", "2025-01-15T10:30:00Z"),
        ("2025-01-15 10:30:00", "2025-01-15T10:30:00Z"),  # v1, UTC
        ("2025-01-15T12:30:00+02:00", "2025-01-15T10:30:00Z"),
        ("2025-01-15T00:30:00.5-01:00", "2025-01-15T01:30:00Z"),
        ("", None),
        (None, None),
        ("not a time", "not a time"),  # kept, never lost
    ],
)
def test_timestamps_have_one_shape(raw, stored):
    assert normalize(raw) == stored


@pytest.mark.parametrize(
    "value", ["2025-01-15T10:30:00Z", "2024-02-29T23:59:59Z", "2025-1-5T1:2:3Z"]
)
def test_a_stored_timestamp_parses_as_strptime_would(value):
    assert parse(value) == datetime.strptime(value, FORMAT).replace(tzinfo=timezone.utc)
    assert parse(value).tzinfo == timezone.utc


@pytest.mark.parametrize("value", ["2025-02-29T10:30:00Z", "2025-01-15T24:00:00Z", "tomorrow"])
def test_a_timestamp_that_is_no_moment_is_refused(value):
    with pytest.raises(ValueError):
        parse(value)
    with pytest.raises(TypeError):  # a number in a tampered database, as strptime says
        parse(1736937000)


def test_slug():
    assert slug("PO Number (SAR)") == "po_number_sar"
    assert slug("Région") == "region"
    assert slug("2nd contact") == "f_2nd_contact"
    assert slug("€€€") == "field"


DEFINITIONS = [
    {
        "field_code": "title",
        "field_name": "Title",
        "field_type": "varchar",
        "is_custom_field": False,
    },
    {
        "field_code": "a" * 40,
        "field_name": "Priority",
        "field_type": "enum",
        "is_custom_field": True,
        "options": [{"id": 1, "label": "Low"}, {"id": 2, "label": "High"}],
    },
    {
        "field_code": "b" * 40,
        "field_name": "Regions",
        "field_type": "set",
        "is_custom_field": True,
        "options": [{"id": 7, "label": "Riyadh"}, {"id": 8, "label": "Jeddah"}],
    },
    {
        "field_code": "c" * 40,
        "field_name": "Budget",
        "field_type": "monetary",
        "is_custom_field": True,
    },
    {
        "field_code": "d" * 40,
        "field_name": "Window",
        "field_type": "daterange",
        "is_custom_field": True,
    },
    {
        "field_code": "e" * 40,
        "field_name": "Site",
        "field_type": "address",
        "is_custom_field": True,
    },
    {
        "field_code": "f" * 40,
        "field_name": "Title",
        "field_type": "varchar",
        "is_custom_field": True,
    },
    {
        "field_code": "0" * 40,
        "field_name": "Priority",
        "field_type": "int",
        "is_custom_field": True,
    },
]


def test_custom_fields_become_readable_columns():
    definitions = [dict(d) for d in DEFINITIONS]
    assign_column_names(definitions, taken=set(by_name()["deals"].columns))
    names = {d["field_code"][:1]: d["column_name"] for d in definitions if d["is_custom_field"]}
    # Clashes with a built-in column or another field keep the field's hash prefix.
    assert names == {
        "a": "priority_aaaaaa",
        "b": "regions",
        "c": "budget",
        "d": "window",
        "e": "site",
        "f": "title_ffffff",
        "0": "priority_000000",
    }
    custom = CustomFieldMap.from_definitions(definitions)
    row = to_row(
        by_name()["deals"],
        {
            "id": 1,
            "title": "<b>x</b>",
            "is_archived": False,
            "is_deleted": False,
            "status": "open",
            "update_time": "2025-01-15T10:30:00.000Z",
            "label_ids": [1, 2],
            "custom_fields": {
                "a" * 40: 2,
                "b" * 40: [8, 7, 99],
                "c" * 40: {"value": 1500.5, "currency": "SAR"},
                "d" * 40: {"value": "2025-01-01", "until": "2025-02-01"},
                "e" * 40: {"value": "King Fahd Rd, Riyadh", "country": "Saudi Arabia"},
                "f" * 40: None,
            },
        },
        custom,
    )
    assert row["priority_aaaaaa"] == "High"
    assert json.loads(row["regions"]) == ["Jeddah", "Riyadh", "99"]  # unknown ids kept
    assert (row["budget"], row["budget_currency"]) == (1500.5, "SAR")
    assert (row["window"], row["window_until"]) == ("2025-01-01", "2025-02-01")
    assert row["site"] == "King Fahd Rd, Riyadh"
    assert row["title_ffffff"] is None and row["priority_000000"] is None
    assert row["title"] == "<b>x</b>"  # stored as is; escaping is the reader's job
    assert row["update_time"] == "2025-01-15T10:30:00Z"
    assert row["label_ids"] == "[1,2]"
    assert json.loads(row["custom_fields"])["a" * 40] == 2  # the raw JSON is kept too
    assert (row["is_archived"], row["is_deleted"], row["status"]) == (0, 0, "open")


def test_deleted_deal_reads_as_status_deleted():
    row = to_row(by_name()["deals"], {"id": 5, "status": "lost", "is_deleted": True})
    assert (row["status"], row["is_deleted"]) == ("deleted", 1)


def test_notes_drop_denormalised_copies():
    row = to_row(
        by_name()["notes"],
        {
            "id": 1,
            "content": "<p>hi</p>",
            "deal": {"title": "old"},
            "active_flag": True,
            "update_time": "2019-12-09 14:26:11",
        },
    )
    assert "deal" not in row
    assert row["update_time"] == "2019-12-09T14:26:11Z" and row["is_deleted"] == 0


@pytest.mark.parametrize("record", [{"title": "no id"}, {"id": None}, {"id": {"x": 1}}, "text", 5])
def test_records_without_a_usable_id_are_refused(record):
    with pytest.raises(BadRecord):
        to_row(by_name()["deals"], record)


def test_lead_custom_fields_are_top_level_keys_in_either_shape():
    from pdsync.entities import by_name
    from pdsync.records import CustomFieldMap, to_row

    money, color = "a" * 40, "b" * 40
    custom = CustomFieldMap.from_definitions(
        [
            {
                "field_code": money,
                "column_name": "budget",
                "field_type": "monetary",
                "is_custom_field": 1,
            },
            {
                "field_code": color,
                "column_name": "color",
                "field_type": "enum",
                "is_custom_field": 1,
                "options": [{"id": 3, "label": "Red"}],
            },
        ]
    )
    spec = by_name()["leads"]
    base = {"id": "0b0e6f0c-8a55-4d8b-a0d1-3f9c6b1d2e4f", "title": "x", "update_time": None}
    v1 = to_row(spec, {**base, money: 120, f"{money}_currency": "SAR", color: 3}, custom)
    v2 = to_row(spec, {**base, money: {"value": 120, "currency": "SAR"}, color: 3}, custom)
    for row in (v1, v2):
        assert (row["budget"], row["budget_currency"], row["color"]) == (120, "SAR", "Red")
        assert not [name for name in row if name.startswith(("a" * 40, "b" * 40))]
