"""GET /api/v1/stats/events: exact buckets for the key's tenant, how fresh they are, read-your-write
waits, and a 400 with the JSON error body for every bad parameter."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from readmodels.projector import project_shard
from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import api_client
from tests.readmodels.helpers import apply_events

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

DAY = datetime(2026, 3, 1, tzinfo=UTC)


def stats(tenant: Any, **params: Any) -> Any:
    return tenant.get("/api/v1/stats/events", **params)


def seed(tenant) -> None:
    events = [("signup", DAY + timedelta(hours=1, minutes=m)) for m in range(3)]
    events += [("signup", DAY + timedelta(hours=5))] * 2
    events += [("login", DAY + timedelta(hours=5))] * 4
    events += [("signup", DAY + timedelta(days=1, hours=2))]
    apply_events(tenant.shard, tenant.tenant.id, events)
    project_shard(tenant.shard)


def test_stats_hourly_buckets_for_one_name():
    tenant = make_tenant("stats-hourly")
    seed(tenant)
    response = stats(tenant, name="signup", interval="hour", start="2026-03-01T00:00:00Z", end="2026-03-03")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["buckets"] == [
        {"name": "signup", "start": "2026-03-01T01:00:00Z", "count": 3},
        {"name": "signup", "start": "2026-03-01T05:00:00Z", "count": 2},
        {"name": "signup", "start": "2026-03-02T02:00:00Z", "count": 1},
    ]
    assert body["as_of"]["position"] > 0
    assert body["as_of"]["time"] is not None
    assert body["lag_seconds"] == 0
    assert (body["min_position"], body["timed_out"]) == (None, False)


def test_stats_daily_buckets_for_every_name_and_start_rounds_down_to_its_bucket():
    tenant = make_tenant("stats-daily")
    seed(tenant)
    body = stats(tenant, interval="day", start="2026-03-01T18:00:00+02:00", end="2026-03-05").json()
    assert body["start"] == "2026-03-01T00:00:00Z"
    assert body["buckets"] == [
        {"name": "login", "start": "2026-03-01T00:00:00Z", "count": 4},
        {"name": "signup", "start": "2026-03-01T00:00:00Z", "count": 5},
        {"name": "signup", "start": "2026-03-02T00:00:00Z", "count": 1},
    ]


def test_stats_accept_an_offset_whose_plus_arrived_as_a_space():
    tenant = make_tenant("stats-plus")
    seed(tenant)
    body = stats(tenant, interval="hour", name="login", start="2026-03-01T06:00:00 02:00", end="2026-03-02").json()
    assert body["start"] == "2026-03-01T04:00:00Z"
    assert body["buckets"] == [{"name": "login", "start": "2026-03-01T05:00:00Z", "count": 4}]


def test_stats_are_scoped_to_the_keys_tenant():
    first = make_tenant("stats-first", shard="shard_0")
    seed(first)
    same_shard = make_tenant("stats-neighbour", shard="shard_0")
    body = stats(same_shard, interval="day", start="2026-03-01", end="2026-03-05").json()
    assert body["buckets"] == []


def test_stats_report_lag_and_time_out_waiting_for_a_position_not_reached():
    tenant = make_tenant("stats-lag")
    seed(tenant)
    apply_events(tenant.shard, tenant.tenant.id, [("late", DAY)])  # applied, not projected yet
    body = stats(
        tenant, interval="day", start="2026-03-01", end="2026-03-05", min_position="999999999", wait="0.2"
    ).json()
    assert body["timed_out"] is True
    assert body["min_position"] == 999999999
    assert body["lag_seconds"] >= 0
    assert {b["name"] for b in body["buckets"]} == {"login", "signup"}  # what it has, without "late"
    reached = stats(
        tenant, interval="day", start="2026-03-01", end="2026-03-05", min_position=str(body["as_of"]["position"])
    )
    assert reached.json()["timed_out"] is False


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"interval": "week"}, "interval"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-13-01"}, "end"),
        ({"start": "2026-03-02", "end": "2026-03-01"}, "end"),
        ({"start": "2020-01-01", "end": "2026-01-01", "interval": "hour"}, "start"),
        ({"min_position": "-1"}, "min_position"),
        ({"min_position": "abc"}, "min_position"),
        ({"min_position": "1", "wait": "31"}, "wait"),
        ({"wait": "soon"}, "wait"),
        ({"name": "x" * 201}, "name"),
    ],
)
def test_stats_bad_parameters_answer_400_naming_the_field(params, field):
    tenant = make_tenant(f"stats-bad-{uuid.uuid4().hex[:6]}")
    response = stats(tenant, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in {d["field"] for d in error["details"]}


def test_stats_without_a_key_answer_401():
    response = api_client().get("/api/v1/stats/events")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_stats_are_documented_in_the_openapi_schema():
    schema = api_client().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/v1/stats/events"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"name", "interval", "start", "end", "min_position", "wait"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EventStats"
    }
    assert {"EventStats", "EventBucket", "AsOf"} <= set(schema["components"]["schemas"])
