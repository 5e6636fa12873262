"""Tenant isolation: one tenant's key never reads or writes another tenant's data.

Every tenant-scoped read endpoint is one ``ScopedRead`` in ``SCOPED_READS``: how to create the owner's
resource and the path that reads it. For each, the other tenant must get exactly what it gets for a
resource that does not exist (404 for resources; ``pending`` for a write id, since an unapplied write has
no record by design), never the owner's data.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from readmodels.projector import project_shard
from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from writes.apply import apply_batch
from writes.ledger import account_create
from writes.models import WriteLog
from writes.routing import TenantContext

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


@dataclass(frozen=True)
class ScopedRead:
    name: str
    # Creates a resource owned by the tenant; returns (its path, a path of the same shape that exists nowhere).
    create: Callable[[TenantHandle], tuple[str, str]]


def _applied_write(owner: TenantHandle) -> tuple[str, str]:
    write_id = str(uuid.uuid4())
    row = [write_id, "secret-event", '{"properties": {"owner": "only"}}', "2026-05-01T12:00:00+00:00"]
    apply_batch(shard=owner.shard, groups=[[str(owner.tenant.id), "event", "2026-05-01T12:00:00+00:00", [row]]])
    return f"/api/v1/writes/{write_id}", f"/api/v1/writes/{uuid.uuid4()}"


def _apply_and_project(owner: TenantHandle, kind: str, key: str, payload: dict[str, Any]) -> None:
    row = [str(uuid.uuid4()), key, json.dumps(payload), "2026-05-01T12:00:00+00:00"]
    apply_batch(shard=owner.shard, groups=[[str(owner.tenant.id), kind, "2026-05-01T12:00:00+00:00", [row]]])
    project_shard(owner.shard)


def _conversation(owner: TenantHandle) -> tuple[str, str]:
    _apply_and_project(owner, "message", "secret-room", {"sender_id": "ann", "body": "for members only"})
    return "/api/v1/conversations/secret-room", "/api/v1/conversations/no-such-room"


def _messages(owner: TenantHandle) -> tuple[str, str]:
    _apply_and_project(owner, "message", "secret-room", {"sender_id": "ann", "body": "for members only"})
    return "/api/v1/conversations/secret-room/messages", "/api/v1/conversations/no-such-room/messages"


def _inbox(owner: TenantHandle) -> tuple[str, str]:
    _apply_and_project(owner, "member", "secret-room", {"user_ids": ["ann", "bob"]})
    _apply_and_project(owner, "message", "secret-room", {"sender_id": "ann", "body": "hello bob"})
    return "/api/v1/users/bob/inbox", "/api/v1/users/nobody/inbox"


def _account(owner: TenantHandle) -> tuple[str, str]:
    account_create(
        tenant=TenantContext(tenant_id=owner.tenant.id, shard=owner.shard),
        account_id="secret-wallet",
        currency="EUR",
        no_overdraft=True,
    )
    return "/api/v1/ledger/accounts/secret-wallet", "/api/v1/ledger/accounts/no-such-wallet"


def _stats(owner: TenantHandle) -> tuple[str, str]:
    _apply_and_project(owner, "event", "secret-event", {"properties": {}})
    query = "interval=day&start=2026-05-01T00:00:00Z&end=2026-05-02T00:00:00Z&name="
    return f"/api/v1/stats/events?{query}secret-event", f"/api/v1/stats/events?{query}no-such-event"


SCOPED_READS = [
    ScopedRead("write status", _applied_write),
    ScopedRead("conversation", _conversation),
    ScopedRead("messages", _messages),
    ScopedRead("inbox", _inbox),
    ScopedRead("account", _account),
    ScopedRead("event stats", _stats),
]


def _without_ids(body: Any, *paths: str) -> Any:
    """The response body with the requested id masked, so two answers for two ids compare equal."""
    text = repr(body)
    for path in paths:
        # The last path segment, or the last query value (the stats' event name).
        text = text.replace(path.rstrip("/").rsplit("/", 1)[-1].rsplit("=", 1)[-1], "<id>")
    return text


@pytest.mark.parametrize("same_shard", [True, False], ids=["same shard", "other shard"])
@pytest.mark.parametrize("read", SCOPED_READS, ids=lambda r: r.name)
def test_other_tenant_reading_a_resource_sees_what_it_sees_for_one_that_does_not_exist(read, same_shard):
    owner = make_tenant("owner", shard="shard_0")
    intruder = make_tenant("intruder", shard="shard_0" if same_shard else "shard_1")
    path, missing_path = read.create(owner)

    mine = owner.get(path)
    assert mine.status_code == 200
    # The owner sees real data: something other than what a missing resource looks like.
    assert _without_ids(mine.json(), path) != _without_ids(owner.get(missing_path).json(), missing_path)

    theirs, missing = intruder.get(path), intruder.get(missing_path)
    assert theirs.status_code == missing.status_code
    assert theirs.status_code in {200, 404}
    assert _without_ids(theirs.json(), path) == _without_ids(missing.json(), missing_path)


@pytest.mark.e2e
@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_a_write_reusing_another_tenants_id_is_its_own_and_stays_on_its_shard(live_worker):
    """Ids are per tenant: reusing B's id neither overwrites nor hides B's write, and lands on A's shard."""
    owner = make_tenant("owner", shard="shard_1")
    path, _ = _applied_write(owner)
    write_id = path.rsplit("/", 1)[-1]
    intruder = make_tenant("intruder", shard="shard_0")
    response = intruder.post_json("/api/v1/events", {"id": write_id, "name": "mine"})
    assert response.status_code == 202
    deadline = time.monotonic() + 30
    while intruder.get(path).json()["status"] != "applied":
        assert time.monotonic() < deadline, "the intruder's own write was never applied"
        time.sleep(0.1)
    owners = WriteLog.objects.using("shard_1").get(write_id=write_id)
    assert (owners.tenant_id, owners.key) == (owner.tenant.id, "secret-event")
    theirs = WriteLog.objects.using("shard_0").get(write_id=write_id)
    assert (theirs.tenant_id, theirs.key) == (intruder.tenant.id, "mine")
    assert owner.get(path).json()["position"] == owners.position
