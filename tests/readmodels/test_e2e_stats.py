"""End to end: events posted over HTTP, applied by a real Celery worker, projected by the projector
task it triggers; the stats then equal the exact counts, read-your-write via ``min_position``."""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

from tests.conftest import ALL_DATABASES, make_tenant

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

EVENTS = 3_000
BATCH = 500
START = datetime(2026, 1, 10, tzinfo=UTC)


def test_stats_equal_exact_counts_after_events_flow_through_the_worker(live_worker):
    tenant = make_tenant("e2e-stats")
    expected_hourly: Counter[tuple[str, str]] = Counter()
    expected_daily: Counter[tuple[str, str]] = Counter()
    last_ids = []
    for start in range(0, EVENTS, BATCH):
        batch = []
        for n in range(start, start + BATCH):
            occurred = START + timedelta(minutes=(n * 53) % (3 * 24 * 60))
            name = f"evt_{n % 3}"
            batch.append({"id": str(uuid.uuid4()), "name": name, "timestamp": occurred.isoformat()})
            expected_hourly[(name, occurred.replace(minute=0).strftime("%Y-%m-%dT%H:%M:%SZ"))] += 1
            expected_daily[(name, occurred.replace(hour=0, minute=0).strftime("%Y-%m-%dT%H:%M:%SZ"))] += 1
        response = tenant.post_json("/api/v1/events", {"batch": batch})
        assert response.status_code == 202, response.content
        last_ids.append(batch[-1]["id"])

    # Read-your-writes as a client does it: the positions of its writes, then a read that waits for them.
    positions = []
    for write_id in last_ids:
        status = tenant.get(f"/api/v1/writes/{write_id}", wait="20").json()
        assert status["status"] == "applied", status
        positions.append(status["position"])
    params = {"start": "2026-01-10", "end": "2026-01-14", "min_position": str(max(positions)), "wait": "30"}
    hourly = tenant.get("/api/v1/stats/events", interval="hour", **params).json()
    assert hourly["timed_out"] is False
    assert hourly["as_of"]["position"] >= max(positions)
    assert Counter({(b["name"], b["start"]): b["count"] for b in hourly["buckets"]}) == expected_hourly
    daily = tenant.get("/api/v1/stats/events", interval="day", **params).json()
    assert Counter({(b["name"], b["start"]): b["count"] for b in daily["buckets"]}) == expected_daily
    assert sum(b["count"] for b in daily["buckets"]) == EVENTS

    out = io.StringIO()
    call_command("writes_status", "--json", stdout=out)
    status = {s["shard"]: s for s in json.loads(out.getvalue())["shards"]}[tenant.shard]
    assert status["last_position"] >= max(positions)
    assert status["queue_depth"] == 0
    counts = {p["projection"]: p for p in status["projections"]}["event_counts"]
    assert status["last_position"] - counts["lag_positions"] >= max(positions)
