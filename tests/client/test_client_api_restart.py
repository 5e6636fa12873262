"""100,000 events from 32 producer threads through one client while the API is SIGKILLed and started
again on the same port: every event is applied exactly once, under the id the client answered."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

import pytest
from django.db import connections
from writes_client import Client

from tests.conftest import ALL_DATABASES, make_tenant
from tests.stack import ROOT, ApiServer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

EVENTS = 100_000
PRODUCERS = 32
KILL_AFTER_ACCEPTED = 30_000


def log_rows(shard: str, tenant_id: uuid.UUID) -> list[tuple[str, int, int]]:
    """(write id, producer, sequence number within the producer) of every row of the tenant."""
    with connections[shard].cursor() as cursor:
        cursor.execute(
            "SELECT write_id::text, (payload->'properties'->>'producer')::int, (payload->'properties'->>'n')::int"
            " FROM write_log WHERE tenant_id = %s",
            [tenant_id],
        )
        return list(cursor.fetchall())


def wait_until(condition, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout}s")
        time.sleep(0.05)


def test_client_100k_events_from_32_threads_api_killed_and_restarted_applied_exactly_once(live_worker):
    tenant = make_tenant("client-restart")
    api = ApiServer(workers=2)
    client = Client(
        api.url,
        tenant.api_key,
        max_batch=1000,
        senders=4,
        max_buffered=20_000,  # bounded: producers wait while the API is down
        on_full="block",
        block_timeout=120,
        backoff_cap=0.5,
    )
    per_producer = EVENTS // PRODUCERS
    captured: list[list[str]] = [[] for _ in range(PRODUCERS)]

    def produce(producer: int) -> None:
        ids = captured[producer]
        for n in range(per_producer):
            ids.append(
                client.capture_event("restart", distinct_id=f"p{producer}", properties={"producer": producer, "n": n})
            )

    producers = [threading.Thread(target=produce, args=(p,)) for p in range(PRODUCERS)]
    started = time.monotonic()
    try:
        for thread in producers:
            thread.start()
        wait_until(lambda: client.stats().accepted >= KILL_AFTER_ACCEPTED, timeout=60, what="first writes accepted")
        api.kill()
        at_kill = client.stats()
        killed_at = time.monotonic()
        api = ApiServer(workers=2, port=api.port)
        down_seconds = time.monotonic() - killed_at
        for thread in producers:
            thread.join(timeout=120)
        assert client.flush(timeout=120), "the client did not deliver everything after the restart"
        stats = client.stats()
        seconds = time.monotonic() - started
    finally:
        client.close(timeout=5)
        api.stop()

    figures = {
        "events": EVENTS,
        "producers": PRODUCERS,
        "seconds_to_all_accepted": round(seconds, 2),
        "api_down_seconds": round(down_seconds, 2),
        "accepted_when_killed": at_kill.accepted,
        "in_flight_or_queued_when_killed": at_kill.buffered,
        "requests": stats.requests,
        "retries": stats.retries,
    }
    (ROOT / "var" / "client").mkdir(parents=True, exist_ok=True)
    (ROOT / "var" / "client" / "api_restart.json").write_text(json.dumps(figures, indent=2))
    ids = [write_id for producer_ids in captured for write_id in producer_ids]
    assert len(ids) == per_producer * PRODUCERS == EVENTS
    assert len(set(ids)) == EVENTS, "the client answered one id for two events"
    assert (stats.captured, stats.accepted, stats.dropped) == (EVENTS, EVENTS, 0)
    assert at_kill.accepted < EVENTS, "the API was killed after the run, not in the middle of it"
    assert stats.retries > 0, "nothing was retried: the kill did not hit the run"

    wait_until(lambda: len(log_rows(tenant.shard, tenant.tenant.id)) >= EVENTS, timeout=120, what="all applied")
    time.sleep(1)  # anything more (a duplicate under another id) would land now
    rows = log_rows(tenant.shard, tenant.tenant.id)
    assert len(rows) == EVENTS, f"{len(rows) - EVENTS} more rows than events captured"
    assert Counter(write_id for write_id, _, _ in rows) == Counter(ids)
    # Every logical event (producer, n) is in the log once, under the id the client answered for it.
    by_event = {(producer, n): write_id for write_id, producer, n in rows}
    assert len(by_event) == EVENTS
    assert all(by_event[(p, n)] == captured[p][n] for p in range(PRODUCERS) for n in range(per_producer))
