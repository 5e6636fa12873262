"""The transfer apply hook against a real shard: guarded balances move in order, overdrafts are
rejected, redeliveries change nothing, and missing accounts are rejected with a clear code."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from tests.conftest import ALL_DATABASES
from writes.apply import apply_batch
from writes.ledger import account_create
from writes.models import LedgerAccount, RejectedWrite, WriteLog
from writes.routing import TenantContext

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC).isoformat()
SHARD = "shard_0"


def transfer(debit: str, credit: str, amount: int, *, currency: str = "EUR", write_id: str | None = None) -> list[str]:
    transfer_id = write_id or str(uuid.uuid4())
    payload = {"debit_account": debit, "credit_account": credit, "amount": amount, "currency": currency}
    return [transfer_id, transfer_id, json.dumps(payload), NOW]


def group(tenant: TenantContext, rows: list[list[str]]) -> list[object]:
    return [str(tenant.tenant_id), "transfer", NOW, rows]


def guarded_balance(tenant: TenantContext, account_id: str) -> int:
    account = LedgerAccount.objects.using(SHARD).get(tenant_id=tenant.tenant_id, account_id=account_id)
    assert account.balance is not None
    return int(account.balance)


@pytest.fixture
def tenant() -> TenantContext:
    context = TenantContext(tenant_id=uuid.uuid4(), shard=SHARD)
    account_create(tenant=context, account_id="equity", currency="EUR", no_overdraft=False)
    account_create(tenant=context, account_id="wallet", currency="EUR", no_overdraft=True)
    account_create(tenant=context, account_id="shop", currency="EUR", no_overdraft=True)
    account_create(tenant=context, account_id="dollars", currency="USD", no_overdraft=False)
    return context


def codes(tenant: TenantContext) -> dict[str, str]:
    return {str(r.write_id): r.code for r in RejectedWrite.objects.using(SHARD).filter(tenant_id=tenant.tenant_id)}


def test_transfer_hook_applies_a_batch_in_order_and_rejects_what_would_overdraw(tenant):
    rows = [
        transfer("wallet", "shop", 1),  # 0: wallet is empty
        transfer("equity", "wallet", 5),  # funds it
        transfer("wallet", "shop", 3),
        transfer("wallet", "shop", 3),  # 2 left: rejected
        transfer("shop", "wallet", 1),
        transfer("wallet", "shop", 3),  # 3 again: fine
    ]
    result = apply_batch(shard=SHARD, groups=[group(tenant, rows)])
    assert (result.applied, result.rejected) == (4, 2)
    assert codes(tenant) == {rows[0][0]: "insufficient_funds", rows[3][0]: "insufficient_funds"}
    assert guarded_balance(tenant, "wallet") == 0
    assert guarded_balance(tenant, "shop") == 5
    applied = WriteLog.objects.using(SHARD).filter(tenant_id=tenant.tenant_id).order_by("position")
    assert [w.key for w in applied] == [rows[i][0] for i in (1, 2, 4, 5)]


def test_transfer_hook_ignores_redeliveries_of_applied_and_rejected_transfers(tenant):
    rows = [transfer("equity", "wallet", 2), transfer("wallet", "shop", 2), transfer("wallet", "shop", 1)]
    apply_batch(shard=SHARD, groups=[group(tenant, rows)])
    # The same message again, and the rejected transfer after the wallet was refilled: nothing moves.
    again = apply_batch(shard=SHARD, groups=[group(tenant, rows)])
    apply_batch(shard=SHARD, groups=[group(tenant, [transfer("equity", "wallet", 10)])])
    retried = apply_batch(shard=SHARD, groups=[group(tenant, [rows[2], rows[2]])])
    assert (again.applied, again.rejected, again.duplicates) == (0, 0, 3)
    assert (retried.applied, retried.rejected) == (0, 0)
    assert guarded_balance(tenant, "wallet") == 10
    assert guarded_balance(tenant, "shop") == 2
    assert codes(tenant) == {rows[2][0]: "insufficient_funds"}


def test_transfer_hook_recognises_a_redelivery_whatever_the_id_spelling(tenant):
    funding = transfer("equity", "wallet", 4)
    apply_batch(shard=SHARD, groups=[group(tenant, [funding])])
    shouted = [funding[0].upper(), funding[1], funding[2], funding[3]]
    again = apply_batch(shard=SHARD, groups=[[str(tenant.tenant_id).upper(), "transfer", NOW, [shouted]]])
    assert (again.applied, again.duplicates) == (0, 1)
    assert guarded_balance(tenant, "wallet") == 4


def test_transfer_hook_rejects_unknown_accounts_and_currency_mismatches_at_apply_time(tenant):
    rows = [
        transfer("equity", "nobody", 1),
        transfer("equity", "dollars", 1),
        transfer("equity", "wallet", 1, currency="USD"),
        transfer("equity", "wallet", 7),
    ]
    result = apply_batch(shard=SHARD, groups=[group(tenant, rows)])
    assert (result.applied, result.rejected) == (1, 3)
    assert codes(tenant) == {
        rows[0][0]: "unknown_account",
        rows[1][0]: "currency_mismatch",
        rows[2][0]: "currency_mismatch",
    }
    assert guarded_balance(tenant, "wallet") == 7


def test_transfer_hook_leaves_events_in_the_same_message_alone(tenant):
    event = [str(uuid.uuid4()), "signup", "{}", NOW]
    groups: list[list[object]] = [
        [str(tenant.tenant_id), "event", NOW, [event]],
        group(tenant, [transfer("wallet", "shop", 1)]),
    ]
    result = apply_batch(shard=SHARD, groups=groups)
    assert (result.applied, result.rejected) == (1, 1)
    assert WriteLog.objects.using(SHARD).filter(tenant_id=tenant.tenant_id, kind="event").count() == 1
