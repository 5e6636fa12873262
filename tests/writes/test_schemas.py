"""Intake validation: pure functions, no database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from writes.intake import event_rows
from writes.schemas import BodyNotJson, EventIn, ValidationFailed, parse_writes


def parse(body: object) -> list[EventIn]:
    return parse_writes(json.dumps(body).encode(), EventIn, max_items=10_000).items


def errors_of(body: object | bytes) -> list[dict[str, object]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ValidationFailed) as caught:
        parse_writes(raw, EventIn, max_items=10_000)
    return [detail.as_dict() for detail in caught.value.details]


def test_parse_writes_accepts_one_event_and_a_batch():
    assert [e.name for e in parse({"name": "signup"})] == ["signup"]
    assert [e.name for e in parse({"batch": [{"name": "a"}, {"name": "b"}]})] == ["a", "b"]


def test_parse_writes_lists_every_bad_item_by_index_and_field():
    details = errors_of({"batch": [{"name": "ok"}, {"name": ""}, {"name": "x", "distinct_id": 5}, {"nam": "typo"}]})
    assert [(d["index"], d["field"]) for d in details] == [(1, "name"), (2, "distinct_id"), (3, "nam")]


def test_parse_writes_rejects_batches_outside_1_to_10000():
    assert errors_of({"batch": []})[0]["field"] == "batch"
    assert errors_of({"batch": [{"name": "a"}] * 10_001})[0]["field"] == "batch"


def test_parse_writes_rejects_nul_characters_anywhere():
    details = errors_of({"batch": [{"name": "fine"}, {"name": "x", "properties": {"k": ["a\u0000b"]}}]})
    assert details == [{"index": 1, "field": "properties", "message": "NUL characters (\\u0000) cannot be stored."}]


def test_parse_writes_rejects_deep_nesting_and_names_it():
    deep: dict[str, object] = {"v": 1}
    for _ in range(10):
        deep = {"d": deep}
    assert errors_of({"name": "x", "properties": deep}) == [
        {"field": "properties", "message": "Nested deeper than 10 levels."}
    ]
    shallow: dict[str, object] = {"v": 1}
    for _ in range(8):
        shallow = {"d": shallow}
    assert parse({"name": "x", "properties": shallow})[0].properties == shallow


def test_parse_writes_rejects_naive_timestamps_and_bad_ids():
    assert errors_of({"name": "x", "timestamp": "2026-01-01T00:00:00"})[0]["field"] == "timestamp"
    assert errors_of({"name": "x", "id": "not-a-uuid"})[0]["field"] == "id"


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe", b'{"name": "\xc3"}'])
def test_parse_writes_rejects_malformed_json(body: bytes):
    with pytest.raises(BodyNotJson):
        parse_writes(body, EventIn, max_items=10)


@pytest.mark.parametrize("body", [[{"name": "a"}], "text", 7])
def test_parse_writes_wants_an_object_at_the_top(body: object):
    assert errors_of(body)[0]["field"] == "$"


def test_event_rows_checks_timestamp_bounds_and_properties_size():
    now = datetime(2026, 6, 1, tzinfo=UTC)
    items = [
        EventIn(name="old", timestamp=datetime(1969, 12, 31, tzinfo=UTC)),
        EventIn(name="future", timestamp=now + timedelta(days=2)),
        EventIn(name="big", properties={"blob": "x" * 33_000}),
        EventIn(name="good", timestamp=now - timedelta(hours=1), distinct_id="u1", properties={"a": 1}),
    ]
    rows, errors = event_rows(items, now, True)
    assert [(e.index, e.field) for e in errors] == [(0, "timestamp"), (1, "timestamp"), (2, "properties")]
    assert len(rows) == 1
    _write_id, key, payload, occurred = rows[0]
    assert key == "good"
    assert json.loads(payload) == {"distinct_id": "u1", "properties": {"a": 1}}
    assert occurred == (now - timedelta(hours=1)).isoformat()


def test_event_rows_keeps_client_ids_and_makes_uuid7_otherwise():
    client_id = "0190f0c4-6c1e-7a4e-9d5a-0123456789ab"
    rows, _ = event_rows(parse({"batch": [{"name": "a", "id": client_id}, {"name": "b"}]}), datetime.now(UTC), True)
    assert rows[0][0] == client_id
    assert rows[1][0][14] == "7"  # the version digit of a UUIDv7


def test_event_rows_limits_the_properties_not_the_whole_payload():
    from writes.schemas import MAX_PROPERTIES_BYTES

    # Properties just under the limit, in a payload pushed over it by the distinct id: accepted.
    filler = "x" * (MAX_PROPERTIES_BYTES - len('{"p":""}'))
    fits = {"name": "a", "distinct_id": "d" * 200, "properties": {"p": filler}}
    too_big = {"name": "b", "properties": {"p": filler + "y"}}
    rows, errors = event_rows(parse({"batch": [fits, too_big]}), datetime.now(UTC), True)
    assert [row[1] for row in rows] == ["a"]
    assert json.loads(rows[0][2])["properties"] == {"p": filler}
    assert [(e.index, e.field) for e in errors] == [(1, "properties")]
