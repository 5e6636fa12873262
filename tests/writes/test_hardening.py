"""Hardening of the write path: ids reused with other content, the ledger while a logical shard moves,
and the projector's delayed triggers."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from kombu import Connection

from tests.conftest import ALL_DATABASES, make_tenant
from writes.apply import EXISTS_WITH_DIFFERENT_FIELDS, apply_batch
from writes.ledger import account_create
from writes.models import LedgerAccount, MovedLogicalShard, RejectedWrite, WriteLog
from writes.moves import _set_fence_on, logical_shard_move
from writes.queues import hold_queue
from writes.routing import TenantContext, logical_shard_for

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC).isoformat()
SHARD = "shard_0"


def event_group(tenant_id: uuid.UUID, write_id: str, *, name: str = "signup") -> list[object]:
    return [str(tenant_id), "event", NOW, [[write_id, name, '{"properties": {"n": 1}}', NOW]]]


def transfer_group(tenant_id: uuid.UUID, write_id: str, debit: str, credit: str, amount: int) -> list[object]:
    payload = json.dumps({"debit_account": debit, "credit_account": credit, "amount": amount, "currency": "EUR"})
    return [str(tenant_id), "transfer", NOW, [[write_id, write_id, payload, NOW]]]


def rejections(tenant_id: uuid.UUID, shard: str = SHARD) -> dict[str, RejectedWrite]:
    return {str(r.write_id): r for r in RejectedWrite.objects.using(shard).filter(tenant_id=tenant_id)}


# --- item 7: an id reused with other content is reported, never dropped -------------------------


def test_apply_reports_an_event_id_reused_by_an_unguarded_transfer():
    context = TenantContext(tenant_id=uuid.uuid4(), shard=SHARD)
    account_create(tenant=context, account_id="equity", currency="EUR", no_overdraft=False)
    account_create(tenant=context, account_id="cash", currency="EUR", no_overdraft=False)
    shared_id = str(uuid.uuid4())
    apply_batch(shard=SHARD, groups=[event_group(context.tenant_id, shared_id)])
    result = apply_batch(shard=SHARD, groups=[transfer_group(context.tenant_id, shared_id, "equity", "cash", 5)])
    assert (result.applied, result.duplicates, result.rejected) == (0, 0, 1)
    rejected = rejections(context.tenant_id)[shared_id]
    assert (rejected.code, rejected.kind) == (EXISTS_WITH_DIFFERENT_FIELDS, "transfer")
    assert "event" in rejected.reason
    assert list(WriteLog.objects.using(SHARD).filter(tenant_id=context.tenant_id).values_list("kind", flat=True)) == [
        "event"
    ]


def test_apply_reports_an_event_id_reused_by_a_guarded_transfer_and_moves_no_balance():
    context = TenantContext(tenant_id=uuid.uuid4(), shard=SHARD)
    account_create(tenant=context, account_id="equity", currency="EUR", no_overdraft=False)
    account_create(tenant=context, account_id="wallet", currency="EUR", no_overdraft=True)
    shared_id = str(uuid.uuid4())
    apply_batch(shard=SHARD, groups=[event_group(context.tenant_id, shared_id)])
    result = apply_batch(shard=SHARD, groups=[transfer_group(context.tenant_id, shared_id, "equity", "wallet", 5)])
    assert result.rejected == 1
    assert rejections(context.tenant_id)[shared_id].code == EXISTS_WITH_DIFFERENT_FIELDS
    wallet = LedgerAccount.objects.using(SHARD).get(tenant_id=context.tenant_id, account_id="wallet")
    assert wallet.balance == 0


def test_apply_reports_a_reused_id_with_another_payload_and_in_the_same_batch():
    tenant_id = uuid.uuid4()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    apply_batch(shard=SHARD, groups=[event_group(tenant_id, first, name="a")])
    result = apply_batch(
        shard=SHARD,
        groups=[
            event_group(tenant_id, first, name="b"),  # other key, same id as an applied write
            event_group(tenant_id, second, name="c"),
            event_group(tenant_id, second, name="d"),  # the same id twice in one batch, other content
        ],
    )
    assert (result.applied, result.rejected, result.duplicates) == (1, 2, 0)
    found = rejections(tenant_id)
    assert {found[first].key, found[second].key} == {"b", "d"}


def test_apply_does_not_report_identical_redeliveries():
    tenant_id = uuid.uuid4()
    write_id = str(uuid.uuid4())
    apply_batch(shard=SHARD, groups=[event_group(tenant_id, write_id)])
    again = apply_batch(shard=SHARD, groups=[event_group(tenant_id, write_id), event_group(tenant_id, write_id)])
    assert (again.applied, again.duplicates, again.rejected) == (0, 2, 0)
    assert rejections(tenant_id) == {}


def test_write_status_shows_the_applied_write_and_the_conflicting_one():
    tenant = make_tenant("reused-ids")
    context = TenantContext(tenant_id=tenant.tenant.id, shard=tenant.shard)
    account_create(tenant=context, account_id="equity", currency="EUR", no_overdraft=False)
    account_create(tenant=context, account_id="cash", currency="EUR", no_overdraft=False)
    shared_id = str(uuid.uuid4())
    apply_batch(shard=tenant.shard, groups=[event_group(tenant.tenant.id, shared_id)])
    apply_batch(shard=tenant.shard, groups=[transfer_group(tenant.tenant.id, shared_id, "equity", "cash", 5)])
    status = tenant.get(f"/api/v1/writes/{shared_id}").json()
    assert (status["status"], status["kind"]) == ("applied", "event")
    assert status["conflict"]["code"] == EXISTS_WITH_DIFFERENT_FIELDS
    assert status["conflict"]["kind"] == "transfer"


# --- item 3: the ledger while a logical shard moves ------------------------------------------------


def _tenant_on_shard_0(name: str) -> TenantContext:
    tenant = make_tenant(name, shard="shard_0")
    return TenantContext(tenant_id=tenant.tenant.id, shard="shard_0")


def test_move_copies_an_account_created_during_catch_up_before_the_transfer_that_uses_it():
    context = _tenant_on_shard_0("ledger-catch-up")
    logical = logical_shard_for(context.tenant_id)
    account_create(tenant=context, account_id="equity", currency="EUR", no_overdraft=False)
    account_create(tenant=context, account_id="wallet", currency="EUR", no_overdraft=True)
    apply_batch(shard="shard_0", groups=[transfer_group(context.tenant_id, str(uuid.uuid4()), "equity", "wallet", 9)])
    apply_batch(shard="shard_0", groups=[transfer_group(context.tenant_id, str(uuid.uuid4()), "equity", "wallet", 1)])
    late_transfer = str(uuid.uuid4())
    created: list[bool] = []

    def during_catch_up(line: str) -> None:
        # After the first chunk was copied: a new account and a transfer to it land on the source.
        if line.strip().startswith("copied") and not created:
            created.append(True)
            account_create(tenant=context, account_id="late", currency="EUR", no_overdraft=True)
            apply_batch(shard="shard_0", groups=[transfer_group(context.tenant_id, late_transfer, "equity", "late", 7)])

    logical_shard_move(logical_shard=logical, target="shard_1", chunk_rows=1, report=during_catch_up)

    assert created
    assert rejections(context.tenant_id, "shard_1") == {}
    assert WriteLog.objects.using("shard_1").filter(tenant_id=context.tenant_id, write_id=late_transfer).exists()
    late = LedgerAccount.objects.using("shard_1").get(tenant_id=context.tenant_id, account_id="late")
    assert late.balance == 7


def test_a_held_logical_shard_forwards_transfers_its_hook_would_reject_instead_of_recording_them():
    context = _tenant_on_shard_0("ledger-held")
    logical = logical_shard_for(context.tenant_id)
    account_create(tenant=context, account_id="equity", currency="EUR", no_overdraft=False)
    account_create(tenant=context, account_id="wallet", currency="EUR", no_overdraft=True)
    unknown, overdraw = str(uuid.uuid4()), str(uuid.uuid4())
    _set_fence_on("shard_0", logical, ("shard_1", MovedLogicalShard.HOLDING))
    try:
        result = apply_batch(
            shard="shard_0",
            groups=[
                transfer_group(context.tenant_id, unknown, "equity", "nowhere", 5),
                transfer_group(context.tenant_id, overdraw, "wallet", "equity", 5),
            ],
        )
        assert (result.rejected, result.diverted) == (0, 2)
        assert rejections(context.tenant_id, "shard_0") == {}
        with Connection(settings.CELERY_BROKER_URL) as connection:
            declared: Any = hold_queue(logical).bind(connection.channel()).queue_declare(passive=True)
        assert declared[1] == 1  # one forwarded message holds both, for the new shard to decide
    finally:
        with Connection(settings.CELERY_BROKER_URL) as connection:
            hold_queue(logical).bind(connection.channel()).delete()


# --- item 10: delayed projector triggers without a countdown on the direct exchange ----------------


def test_projection_triggers_inside_the_debounce_window_send_no_countdown_and_still_run(live_worker):
    from readmodels.projections.checkpoints import current_checkpoint
    from readmodels.tasks import TRIGGER_INTERVAL_SECONDS, request_projection
    from tests.readmodels.helpers import apply_events
    from tests.writes.test_e2e_events import wait_until

    tenant = make_tenant("trailing-trigger")
    warnings: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append  # type: ignore[method-assign,assignment]
    celery_logger = logging.getLogger("celery.app.base")  # Celery's send_task logs the warning here
    celery_logger.addHandler(handler)
    celery_logger.disabled = False
    apply_events(tenant.shard, tenant.tenant.id, [("first", datetime.now(UTC))])
    request_projection(tenant.shard)
    apply_events(tenant.shard, tenant.tenant.id, [("second", datetime.now(UTC))])
    request_projection(tenant.shard)  # inside the window: the trailing trigger, delayed
    head = WriteLog.objects.using(tenant.shard).filter(tenant_id=tenant.tenant.id).order_by("-position")[0].position

    def projected() -> bool:
        with connections[tenant.shard].cursor() as cursor:
            return current_checkpoint(cursor, "event_counts") >= head

    try:
        wait_until(projected, timeout=30)
    finally:
        celery_logger.removeHandler(handler)
    assert TRIGGER_INTERVAL_SECONDS > 0
    assert not [r for r in warnings if "delayed delivery" in r.getMessage()]
