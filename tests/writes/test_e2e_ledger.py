"""End to end, the ledger's promise: 1,000 concurrent transfers of 1 from a no_overdraft account
holding 500, through HTTP, RabbitMQ and two Celery workers, end with exactly 500 applied."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.conf import settings
from django.db import connections

from readmodels.models import LedgerBalance
from readmodels.projections.ledger import PROJECTION_NAME, ledger_discrepancies
from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from tests.stack import Worker
from tests.writes.test_e2e_events import wait_until
from writes.models import RejectedWrite, WriteLog
from writes.queues import queue_name

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

TRANSFERS = 1_000
START_BALANCE = 500
CLIENTS = 10  # concurrent HTTP clients; each holds two database connections (control, shard)


def applied_tasks(worker: Worker) -> int:
    """Transactions the worker committed (each logs one line, however many messages it held)."""
    return worker.log_path.read_text().count(" message(s) in ")


def post_transfers(tenant: TenantHandle, ids: list[str], failures: list[str]) -> None:
    try:
        for transfer_id in ids:
            body = {"id": transfer_id, "debit_account": "wallet", "credit_account": "shop", "amount": 1,
                    "currency": "EUR"}  # fmt: skip
            response = tenant.post_json("/api/v1/ledger/transfers", body)
            if response.status_code != 202:
                failures.append(f"{response.status_code}: {response.content!r}")
    finally:
        connections.close_all()


def test_1000_concurrent_transfers_from_a_no_overdraft_account_holding_500_apply_exactly_500(live_worker):
    second = Worker([queue_name(alias) for alias in settings.SHARD_ALIASES], name="second")
    try:
        tenant = make_tenant("bank")
        for account_id, guarded in [("equity", False), ("wallet", True), ("shop", False)]:
            response = tenant.post_json(
                "/api/v1/ledger/accounts", {"id": account_id, "currency": "EUR", "no_overdraft": guarded}
            )
            assert response.status_code == 201, response.content
        # Money enters through a funding account that may go negative (the bank's equity).
        funding = tenant.post_json(
            "/api/v1/ledger/transfers",
            {
                "id": str(uuid.uuid4()),
                "debit_account": "equity",
                "credit_account": "wallet",
                "amount": START_BALANCE,
                "currency": "EUR",
            },
        )
        assert tenant.get(funding["Location"], wait="20").json()["status"] == "applied"
        assert tenant.get("/api/v1/ledger/accounts/wallet").json()["balance"] == START_BALANCE

        tasks_before = (applied_tasks(live_worker), applied_tasks(second))
        ids = [str(uuid.uuid4()) for _ in range(TRANSFERS)]
        failures: list[str] = []
        clients = [
            threading.Thread(target=post_transfers, args=(tenant, ids[n::CLIENTS], failures)) for n in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        assert failures == []

        log = WriteLog.objects.using(tenant.shard).filter(tenant_id=tenant.tenant.id, write_id__in=ids)
        rejected = RejectedWrite.objects.using(tenant.shard).filter(tenant_id=tenant.tenant.id, write_id__in=ids)
        wait_until(lambda: log.count() + rejected.count() == TRANSFERS, timeout=90)
        assert log.count() == START_BALANCE
        assert rejected.filter(code="insufficient_funds").count() == TRANSFERS - START_BALANCE
        assert tenant.get("/api/v1/ledger/accounts/wallet").json()["balance"] == 0
        some_rejected = str(rejected.first().write_id)  # type: ignore[union-attr]
        status = tenant.get(f"/api/v1/writes/{some_rejected}").json()
        assert (status["status"], status["code"]) == ("rejected", "insufficient_funds")

        # Several batches, and both workers took part.
        tasks_after = (applied_tasks(live_worker), applied_tasks(second))
        assert tasks_after[0] > tasks_before[0]
        assert tasks_after[1] > tasks_before[1]

        # The projection catches up to the same numbers, and the per-currency sum is zero.
        balances = LedgerBalance.objects.using(tenant.shard).filter(tenant_id=tenant.tenant.id)
        wait_until(lambda: balances.filter(account_id="shop", balance=START_BALANCE).exists(), timeout=30)
        assert {b.account_id: int(b.balance) for b in balances} == {"equity": -500, "wallet": 0, "shop": 500}
        shop = tenant.get("/api/v1/ledger/accounts/shop").json()
        assert (shop["balance"], shop["consistency"]) == (START_BALANCE, "eventual")
        with connections[tenant.shard].cursor() as cursor:
            cursor.execute("SELECT position FROM projection_checkpoints WHERE projection = %s", [PROJECTION_NAME])
            assert ledger_discrepancies(cursor, end=cursor.fetchone()[0]) == []
    finally:
        second.stop()
