"""End to end: HTTP → RabbitMQ (confirmed) → a real Celery worker → each tenant's own shard."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from writes.models import WriteLog

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

EVENTS_PER_TENANT = 10_000
BATCH = 1_000


def wait_until(condition: Callable[[], bool], *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s")
        time.sleep(0.1)


def rows_on(shard: str, tenant: TenantHandle) -> int:
    return WriteLog.objects.using(shard).filter(tenant_id=tenant.tenant.id).count()


def post_events(tenant: TenantHandle, ids: list[str]) -> None:
    for start in range(0, len(ids), BATCH):
        batch = [
            {"id": write_id, "name": f"page_view_{n % 7}", "distinct_id": f"user-{n % 100}", "properties": {"n": n}}
            for n, write_id in enumerate(ids[start : start + BATCH], start=start)
        ]
        response = tenant.post_json("/api/v1/events", {"batch": batch})
        assert response.status_code == 202, response.content
        assert response.json()["ids"] == ids[start : start + BATCH]


def test_two_tenants_on_two_shards_each_land_exactly_once_on_their_own_shard(live_worker):
    first = make_tenant("first", shard="shard_0")
    second = make_tenant("second", shard="shard_1")
    ids = {t.shard: [str(uuid.uuid4()) for _ in range(EVENTS_PER_TENANT)] for t in (first, second)}
    for tenant in (first, second):
        post_events(tenant, ids[tenant.shard])

    wait_until(
        lambda: rows_on("shard_0", first) == EVENTS_PER_TENANT and rows_on("shard_1", second) == EVENTS_PER_TENANT
    )
    assert rows_on("shard_1", first) == 0
    assert rows_on("shard_0", second) == 0
    stored = set(WriteLog.objects.using("shard_0").filter(tenant_id=first.tenant.id).values_list("write_id", flat=True))
    assert {str(i) for i in stored} == set(ids["shard_0"])

    # Posting the same ids again adds nothing. Each repeated batch carries one new id, so once the new
    # ones are applied, the batches holding the repeats have been applied too.
    fresh: list[str] = []
    for start in range(0, EVENTS_PER_TENANT, BATCH):
        fresh.append(str(uuid.uuid4()))
        post_events(first, [*ids["shard_0"][start : start + BATCH - 1], fresh[-1]])
    wait_until(lambda: WriteLog.objects.using("shard_0").filter(write_id__in=fresh).count() == len(fresh))
    assert rows_on("shard_0", first) == EVENTS_PER_TENANT + len(fresh)


def test_single_event_status_turns_applied_with_its_position(live_worker):
    tenant = make_tenant("solo")
    response = tenant.post_json("/api/v1/events", {"name": "signup", "distinct_id": "u-1"})
    assert response.status_code == 202
    status = tenant.get(response["Location"], wait="10").json()
    assert status["status"] == "applied"
    stored = WriteLog.objects.using(tenant.shard).get(tenant_id=tenant.tenant.id)
    assert status["position"] == stored.position
    assert stored.key == "signup"
    assert stored.payload == {"distinct_id": "u-1"}
