"""Read-your-own-write on chat and ledger reads: ``?min_position=P`` waits until the read model has
passed P and says ``timed_out`` when it has not, on every read that promises it."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from readmodels.projector import project_shard
from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from writes.apply import apply_batch
from writes.ledger import account_create
from writes.models import WriteLog
from writes.routing import TenantContext

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

READS = {
    "conversation": "/api/v1/conversations/room",
    "messages": "/api/v1/conversations/room/messages",
    "inbox": "/api/v1/users/bob/inbox",
    "account": "/api/v1/ledger/accounts/shop",
}


def _apply(tenant: TenantHandle, kind: str, key: str, payload: dict[str, Any]) -> int:
    now = datetime.now(UTC).isoformat()
    write_id = str(uuid.uuid4())
    key = write_id if kind == "transfer" else key
    apply_batch(
        shard=tenant.shard, groups=[[str(tenant.tenant.id), kind, now, [[write_id, key, json.dumps(payload), now]]]]
    )
    return WriteLog.objects.using(tenant.shard).get(tenant_id=tenant.tenant.id, write_id=write_id).position


def _tenant_with_an_unprojected_write(*, key_known_to_the_api: bool = True) -> tuple[TenantHandle, int]:
    """A tenant whose chat and ledger read models are projected up to a point, and one write of each
    kind applied beyond it: returns the position of the last. ``key_known_to_the_api``: the API process
    has already served a request with the tenant's key (as it has for any client that wrote first)."""
    tenant = make_tenant("fresh")
    context = TenantContext(tenant_id=tenant.tenant.id, shard=tenant.shard)
    for account in ("equity", "shop"):
        account_create(tenant=context, account_id=account, currency="EUR", no_overdraft=False)
    _apply(tenant, "member", "room", {"user_ids": ["ann", "bob"]})
    _apply(tenant, "message", "room", {"sender_id": "ann", "body": "first"})
    _apply(
        tenant, "transfer", "", {"debit_account": "equity", "credit_account": "shop", "amount": 5, "currency": "EUR"}
    )
    project_shard(tenant.shard)
    if key_known_to_the_api:
        assert tenant.get(f"/api/v1/writes/{uuid.uuid4()}").status_code == 200
    _apply(tenant, "message", "room", {"sender_id": "ann", "body": "second"})
    last = _apply(
        tenant, "transfer", "", {"debit_account": "equity", "credit_account": "shop", "amount": 7, "currency": "EUR"}
    )
    return tenant, last


@pytest.mark.parametrize("read", sorted(READS))
def test_a_read_not_yet_reflecting_min_position_says_timed_out_after_its_wait(read):
    tenant, position = _tenant_with_an_unprojected_write()
    started = time.monotonic()
    response = tenant.get(READS[read], min_position=str(position), wait="0.5")
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["timed_out"] is True
    assert body["as_of"]["position"] < position
    assert 0.4 <= elapsed < 10


@pytest.mark.parametrize("read", sorted(READS))
def test_a_read_waits_for_min_position_and_answers_as_soon_as_the_projection_passes_it(read):
    tenant, position = _tenant_with_an_unprojected_write()
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        waiting = pool.submit(tenant.get, READS[read], min_position=str(position), wait="20")
        time.sleep(0.3)
        assert not waiting.done(), "answered before the projection reached the position"
        project_shard(tenant.shard)
        response = waiting.result(timeout=30)
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["timed_out"] is False
    assert body["as_of"]["position"] >= position
    assert elapsed < 10, "woken by its wait's end, not by the projection"
    if read == "account":
        assert body["balance"] == 12
    if read == "conversation":
        assert body["message_count"] == 2


def test_min_position_already_reached_answers_at_once_without_timing_out():
    tenant, position = _tenant_with_an_unprojected_write()
    project_shard(tenant.shard)
    for path in READS.values():
        started = time.monotonic()
        body = tenant.get(path, min_position=str(position), wait="20").json()
        assert (body["timed_out"], body["as_of"]["position"] >= position) == (False, True), path
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("read", ["conversation", "account"])
def test_the_first_read_with_a_key_waits_for_min_position_too(read):
    tenant, position = _tenant_with_an_unprojected_write(key_known_to_the_api=False)
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(tenant.get, READS[read], min_position=str(position), wait="20")
        time.sleep(0.3)
        assert not waiting.done(), "answered before the projection reached the position"
        project_shard(tenant.shard)
        body = waiting.result(timeout=30).json()
    assert body["timed_out"] is False
