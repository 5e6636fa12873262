"""Scaling out: a logical shard moves to another physical shard while its writes keep flowing.

Real stack: the API in this process, RabbitMQ, a real Celery worker on both shard queues, PostgreSQL.
"""

from __future__ import annotations

import io
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from kombu import Connection

from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from tests.stack import queue_depth
from tests.writes.test_e2e_events import wait_until
from tests.writes.test_ledger_apply import group, transfer
from tests.writes.test_metrics import value
from writes.apply import apply_batch
from writes.ledger import account_create
from writes.models import LedgerAccount, MovedLogicalShard, RejectedWrite, ShardMap, WriteLog
from writes.moves import _drain_hold_queue, _set_fence_on, logical_shard_move
from writes.queues import hold_queue, shard_queue
from writes.routing import TenantContext

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

NOW = datetime.now(UTC).isoformat()


def ids_on(shard: str, tenant: TenantHandle) -> list[str]:
    rows = WriteLog.objects.using(shard).filter(tenant_id=tenant.tenant.id).values_list("write_id", flat=True)
    return [str(i) for i in rows]


def two_tenants_on_shard_0() -> tuple[TenantHandle, TenantHandle]:
    """Two tenants on shard_0 with different logical shards: one will move, one must stay."""
    mover = make_tenant("mover", shard="shard_0")
    for attempt in range(50):
        bystander = make_tenant(f"bystander-{attempt}", shard="shard_0")
        if bystander.tenant.logical_shard != mover.tenant.logical_shard:
            return mover, bystander
    raise AssertionError("no second logical shard on shard_0")


class WriteStream:
    """A client thread posting batches of events until stopped, remembering every id answered 202."""

    def __init__(self, tenant: TenantHandle, *, batch: int = 40) -> None:
        self.tenant = tenant
        self.batch = batch
        self.accepted: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                body = {"batch": [{"id": str(uuid.uuid4()), "name": "tick"} for _ in range(self.batch)]}
                response = self.tenant.post_json("/api/v1/events", body)
                if response.status_code == 202:
                    self.accepted.extend(response.json()["ids"])
                else:
                    self.failures.append(f"{response.status_code} {response.content[:200]!r}")
        finally:
            connections.close_all()

    def __enter__(self) -> WriteStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_move_logical_shard_while_writes_flow_applies_every_accepted_write_once_on_the_new_shard(live_worker):
    mover, bystander = two_tenants_on_shard_0()
    logical = mover.tenant.logical_shard
    output = io.StringIO()
    with WriteStream(mover) as moving, WriteStream(bystander) as staying:
        wait_until(lambda: len(ids_on("shard_0", mover)) >= 800, timeout=60)
        call_command("move_logical_shard", str(logical), "--to", "shard_1", "--chunk-rows", "300", stdout=output)
        accepted_at_switch = len(moving.accepted)
        # Writes go on after the switch, now straight to shard_1.
        wait_until(lambda: len(moving.accepted) >= accepted_at_switch + 400, timeout=60)
    assert moving.failures == []
    assert staying.failures == []
    assert ShardMap.objects.get(logical_shard=logical).alias == "shard_1"

    # Every write answered 202 ends up on shard_1, exactly once.
    expected = set(moving.accepted)
    wait_until(lambda: len(ids_on("shard_1", mover)) >= len(expected), timeout=90)
    on_new = ids_on("shard_1", mover)
    assert len(on_new) == len(set(on_new)) == len(expected)
    assert set(on_new) == expected
    assert not RejectedWrite.objects.using("shard_1").filter(tenant_id=mover.tenant.id).exists()
    # The old shard kept what it had applied before the switch (append-only), and nothing after it.
    on_old = set(ids_on("shard_0", mover))
    assert 800 <= len(on_old) < len(expected)
    assert on_old <= expected

    # The tenant that did not move was not touched.
    wait_until(lambda: len(ids_on("shard_0", bystander)) == len(staying.accepted), timeout=60)
    assert ids_on("shard_1", bystander) == []

    # Reads follow the map: a write applied on the old shard before the move reads as applied on shard_1,
    # with shard_1's position.
    for write_id in [moving.accepted[0], moving.accepted[len(moving.accepted) // 2], moving.accepted[-1]]:
        status = mover.get(f"/api/v1/writes/{write_id}").json()
        assert status["status"] == "applied"
        assert status["position"] == WriteLog.objects.using("shard_1").get(write_id=write_id).position
    assert "shard map switched" in output.getvalue()

    # The API routes by the new map at once (no stale cache): new writes are not detoured via shard_0.
    # A forwarding task counts its diverted rows just after COMMIT: wait until the last one has finished.
    wait_until(lambda: queue_depth(shard_queue("shard_0")) == 0, timeout=30)
    live_worker.wait_idle()
    diverted = value(live_worker.metrics(), "writes_rows_diverted_total", shard="shard_0")
    response = mover.post_json("/api/v1/events", {"batch": [{"name": "after"} for _ in range(5)]})
    assert response.status_code == 202
    wait_until(lambda: set(response.json()["ids"]) <= set(ids_on("shard_1", mover)), timeout=30)
    assert value(live_worker.metrics(), "writes_rows_diverted_total", shard="shard_0") == diverted


def test_fenced_shard_holds_then_forwards_a_moving_logical_shard_and_applies_the_rest(live_worker):
    mover, bystander = two_tenants_on_shard_0()
    logical = mover.tenant.logical_shard
    moving_rows = [[str(uuid.uuid4()), "held", "{}", NOW] for _ in range(5)]
    staying_rows = [[str(uuid.uuid4()), "stays", "{}", NOW] for _ in range(3)]
    groups = [[str(mover.tenant.id), "event", NOW, moving_rows], [str(bystander.tenant.id), "event", NOW, staying_rows]]

    # While the switch is under way, the source forwards the moving logical shard's writes to its hold queue.
    _set_fence_on("shard_0", logical, ("shard_1", MovedLogicalShard.HOLDING))
    result = apply_batch(shard="shard_0", groups=groups)
    assert (result.applied, result.diverted) == (3, 5)
    assert ids_on("shard_0", mover) == []
    assert len(ids_on("shard_0", bystander)) == 3
    with Connection(settings.CELERY_BROKER_URL) as connection:
        declared: Any = hold_queue(logical).bind(connection.channel()).queue_declare(passive=True)
        _, held, _ = declared
    assert held == 1

    # Once moved: the held message is released to shard_1, and stragglers go straight there.
    _set_fence_on("shard_0", logical, ("shard_1", MovedLogicalShard.MOVED))
    assert _drain_hold_queue(logical, "shard_1") == 1
    late = [[str(uuid.uuid4()), "late", "{}", NOW]]
    assert apply_batch(shard="shard_0", groups=[[str(mover.tenant.id), "event", NOW, late]]).diverted == 1
    wait_until(lambda: len(ids_on("shard_1", mover)) == 6, timeout=30)
    assert set(ids_on("shard_1", mover)) == {row[0] for row in [*moving_rows, *late]}
    assert ids_on("shard_0", mover) == []


def test_rerunning_an_interrupted_move_finishes_it(live_worker):
    mover, _ = two_tenants_on_shard_0()
    logical = mover.tenant.logical_shard
    before = [[str(uuid.uuid4()), "before", "{}", NOW] for _ in range(4)]
    apply_batch(shard="shard_0", groups=[[str(mover.tenant.id), "event", NOW, before]])
    # Interrupted after the switch: fence still "holding", one message held, rows not all copied.
    _set_fence_on("shard_0", logical, ("shard_1", MovedLogicalShard.HOLDING))
    held = [[str(uuid.uuid4()), "held", "{}", NOW] for _ in range(2)]
    assert apply_batch(shard="shard_0", groups=[[str(mover.tenant.id), "event", NOW, held]]).diverted == 2
    ShardMap.objects.filter(logical_shard=logical).update(alias="shard_1")

    output = io.StringIO()
    call_command("move_logical_shard", str(logical), "--to", "shard_1", stdout=output)
    assert "finishing an interrupted move from shard_0" in output.getvalue()
    assert MovedLogicalShard.objects.using("shard_0").get(logical_shard=logical).state == MovedLogicalShard.MOVED
    wait_until(lambda: len(ids_on("shard_1", mover)) == 6, timeout=30)
    assert set(ids_on("shard_1", mover)) == {row[0] for row in [*before, *held]}


def test_move_refuses_an_unknown_target_shard_with_a_clear_error():
    with pytest.raises(CommandError, match="shard_9 is not a configured shard"):
        call_command("move_logical_shard", "3", "--to", "shard_9")
    with pytest.raises(CommandError, match="0 to 255"):
        call_command("move_logical_shard", "300", "--to", "shard_1")


def test_moving_a_ledger_tenant_brings_its_accounts_and_rebuilds_guarded_balances():
    tenant = make_tenant("ledger-mover", shard="shard_0")
    context = TenantContext(tenant_id=tenant.tenant.id, shard="shard_0")
    account_create(tenant=context, account_id="equity", currency="EUR", no_overdraft=False)
    account_create(tenant=context, account_id="wallet", currency="EUR", no_overdraft=True)
    apply_batch(
        shard="shard_0", groups=[group(context, [transfer("equity", "wallet", 90), transfer("wallet", "equity", 25)])]
    )
    apply_batch(shard="shard_0", groups=[group(context, [transfer("wallet", "equity", 100)])])  # overdraws: rejected

    result = logical_shard_move(logical_shard=tenant.tenant.logical_shard, target="shard_1")

    assert result.accounts_copied == 2
    moved = {a.account_id: a for a in LedgerAccount.objects.using("shard_1").filter(tenant_id=tenant.tenant.id)}
    assert set(moved) == {"equity", "wallet"}
    assert moved["wallet"].balance == 65
    assert moved["equity"].balance is None
    assert WriteLog.objects.using("shard_1").filter(tenant_id=tenant.tenant.id, kind="transfer").count() == 2
    assert (
        RejectedWrite.objects.using("shard_1").filter(tenant_id=tenant.tenant.id).values_list("code", flat=True)[0]
        == "insufficient_funds"
    )
    # The next transfer on the new shard sees the rebuilt balance.
    apply_batch(shard="shard_1", groups=[group(context, [transfer("wallet", "equity", 70)])])
    assert RejectedWrite.objects.using("shard_1").filter(tenant_id=tenant.tenant.id).count() == 2
    apply_batch(shard="shard_1", groups=[group(context, [transfer("wallet", "equity", 65)])])
    assert LedgerAccount.objects.using("shard_1").get(tenant_id=tenant.tenant.id, account_id="wallet").balance == 0
