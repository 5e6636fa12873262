"""The ledger projection and its invariants against a real shard: balances are the sums of their
transfers, sum to zero per currency, and drift is found and fixed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from django.db import connections

from readmodels.models import LedgerBalance
from readmodels.projections.ledger import PROJECTION_NAME, LedgerProjection, ledger_discrepancies
from readmodels.projector import project_shard
from readmodels.repair import repair_projection
from tests.conftest import ALL_DATABASES
from tests.writes.test_ledger_apply import group, transfer
from writes.apply import apply_batch
from writes.ledger import account_create
from writes.models import LedgerAccount
from writes.routing import TenantContext

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)

SHARD = "shard_0"


def checkpoint(cursor) -> int:
    cursor.execute("SELECT position FROM projection_checkpoints WHERE projection = %s", [PROJECTION_NAME])
    return int(cursor.fetchone()[0])


@pytest.fixture
def funded() -> TenantContext:
    tenant = TenantContext(tenant_id=uuid.uuid4(), shard=SHARD)
    for account_id, currency, guarded in [("equity", "EUR", False), ("wallet", "EUR", True), ("bank", "USD", False)]:
        account_create(tenant=tenant, account_id=account_id, currency=currency, no_overdraft=guarded)
    account_create(tenant=tenant, account_id="usd-wallet", currency="USD", no_overdraft=False)
    rows = [transfer("equity", "wallet", 100), transfer("wallet", "equity", 30), transfer("wallet", "equity", 500)]
    apply_batch(shard=SHARD, groups=[group(tenant, rows)])
    apply_batch(shard=SHARD, groups=[group(tenant, [transfer("bank", "usd-wallet", 7, currency="USD")])])
    project_shard(SHARD)
    return tenant


def balances(tenant: TenantContext) -> dict[str, int]:
    rows = LedgerBalance.objects.using(SHARD).filter(tenant_id=tenant.tenant_id)
    return {row.account_id: int(row.balance) for row in rows}


def test_ledger_projection_sums_applied_transfers_only(funded):
    assert balances(funded) == {"equity": -70, "wallet": 70, "bank": -7, "usd-wallet": 7}
    with connections[SHARD].cursor() as cursor:
        assert ledger_discrepancies(cursor, end=checkpoint(cursor)) == []


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_ledger_discrepancies_report_each_broken_invariant_and_repair_fixes_the_projection(funded):
    LedgerBalance.objects.using(SHARD).filter(tenant_id=funded.tenant_id, account_id="wallet").update(balance=71)
    LedgerAccount.objects.using(SHARD).filter(tenant_id=funded.tenant_id, account_id="wallet").update(balance=69)
    with connections[SHARD].cursor() as cursor:
        found = {
            (d.check, d.account_id, d.expected, d.actual) for d in ledger_discrepancies(cursor, end=checkpoint(cursor))
        }
    assert found == {
        ("currency_sum", None, 0, 1),
        ("projected_balance", "wallet", 70, 71),
        ("guarded_balance", "wallet", 70, 69),
    }
    report = repair_projection(shard=SHARD, projection=LedgerProjection(), since=LONG_AGO)
    assert (report.drift_found, report.drift_fixed) == (3, 1)
    assert balances(funded)["wallet"] == 70
    # The guarded balance is the applier's record: reported, never overwritten by repair.
    with connections[SHARD].cursor() as cursor:
        scan = LedgerProjection().find_drift(cursor, upto=checkpoint(cursor), since=LONG_AGO)
    assert {d.check for d in scan.drift} == {"guarded_balance"}
