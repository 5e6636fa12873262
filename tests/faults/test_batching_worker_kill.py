"""SIGKILL of a worker while it holds several messages in one open apply transaction, under load of
events and ledger transfers: nothing acked before COMMIT is lost, nothing is applied twice, and the
ledger's invariants hold.

Each kill is proven to land inside a multi-message transaction: right before it, the shard's
``pg_stat_activity`` shows the worker's connection in an open transaction named
``apply <shard> messages=N …`` (N ≥ 2, transfers among its writes), and after it that transaction's
id is reported aborted by PostgreSQL (``pg_xact_status``), never committed.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connections

from readmodels.projections.ledger import invariant_violations
from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from tests.faults.harness import ApiServer, Load, count_outcome, wait_until
from tests.faults.test_faults import assert_exactly_once, own_queues, stop_all  # noqa: F401 (fixture)
from tests.stack import Worker
from writes.ledger import account_create
from writes.models import RejectedWrite, WriteLog
from writes.queues import maintenance_queue_name, queue_name
from writes.routing import TenantContext

pytestmark = [pytest.mark.faults, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

KILLS = 5
ACCOUNTS = 20
GUARDED = 5
_TAG = re.compile(r"^apply (?P<shard>\S+) messages=(?P<messages>\d+) writes=(?P<writes>\d+) (?P<kinds>\S*)")


@dataclass
class OpenApply:
    pid: int
    xid: int
    messages: int
    writes: int
    kinds: str


def _admin() -> psycopg.Connection[tuple[Any, ...]]:
    url = os.environ.get("FAULTS_ADMIN_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return psycopg.connect(url, autocommit=True)


def open_multi_message_apply(admin: psycopg.Connection[tuple[Any, ...]], alias: str) -> OpenApply | None:
    """A worker connection to this shard inside an apply transaction of two or more messages, with
    transfers among its writes and a transaction id (it has written), if there is one right now."""
    rows = admin.execute(
        "SELECT pid, backend_xid::text, application_name FROM pg_stat_activity "
        "WHERE datname = %s AND backend_type = 'client backend' AND xact_start IS NOT NULL "
        "AND backend_xid IS NOT NULL AND application_name LIKE 'apply %%'",
        [connections[alias].settings_dict["NAME"]],
    ).fetchall()
    for pid, xid, name in rows:
        found = _TAG.match(str(name))
        if found and int(found["messages"]) >= 2 and "transfer" in found["kinds"]:
            return OpenApply(int(pid), int(xid), int(found["messages"]), int(found["writes"]), found["kinds"])
    return None


def xact_status(admin: psycopg.Connection[tuple[Any, ...]], xid: int) -> str:
    """``pg_xact_status`` of a 32-bit transaction id, in the current epoch."""
    row = admin.execute(
        "SELECT pg_xact_status((((pg_snapshot_xmax(pg_current_snapshot())::text::bigint >> 32) << 32) + %s)"
        "::text::xid8)",
        [xid],
    ).fetchone()
    return str(row[0]) if row else "unknown"


@dataclass
class TransferLoad:
    """Threads posting transfers (batches of 20; 10 % touching no_overdraft accounts) to one tenant."""

    port: int
    tenant: TenantHandle
    threads: int = 2
    accepted: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._workers = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)]
        for thread in self._workers:
            thread.start()

    def _body(self, rng: random.Random) -> tuple[list[str], str]:
        batch, ids = [], []
        for n in range(20):
            if rng.random() < 0.1:
                guard, other = f"guard-{rng.randrange(GUARDED)}", f"acct-{rng.randrange(ACCOUNTS)}"
                debit, credit = ("equity", guard) if n % 2 == 0 else (guard, other)
            else:
                debit, credit = rng.sample([f"acct-{a}" for a in range(ACCOUNTS)] + ["equity"], 2)
            ids.append(str(uuid.uuid4()))
            batch.append({"id": ids[-1], "debit_account": debit, "credit_account": credit,
                          "amount": rng.randrange(1, 50), "currency": "EUR"})  # fmt: skip
        return ids, json.dumps({"batch": batch})

    def _run(self, number: int) -> None:
        rng = random.Random(number)
        connection: http.client.HTTPConnection | None = None
        headers = {"Authorization": f"Bearer {self.tenant.api_key}", "Content-Type": "application/json"}
        while not self._stop.is_set():
            ids, body = self._body(rng)
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                connection.request("POST", "/api/v1/ledger/transfers", body=body, headers=headers)
                answer = connection.getresponse()
                answer.read()
                status = answer.status
            except (OSError, http.client.HTTPException):
                status = 0
                if connection is not None:
                    connection.close()
                connection = None
            if status == 202:
                with self._lock:
                    self.accepted.extend(ids)
            else:
                time.sleep(0.05)

    def stop(self) -> list[str]:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=30)
        return list(self.accepted)


def ledger_tenant(alias: str) -> TenantHandle:
    tenant = make_tenant(f"kill-ledger-{alias}", shard=alias)
    context = TenantContext(tenant_id=tenant.tenant.id, shard=tenant.shard)
    account_create(tenant=context, account_id="equity", currency="EUR", no_overdraft=False)
    for n in range(ACCOUNTS):
        account_create(tenant=context, account_id=f"acct-{n}", currency="EUR", no_overdraft=False)
    for n in range(GUARDED):
        account_create(tenant=context, account_id=f"guard-{n}", currency="EUR", no_overdraft=True)
    return tenant


def projector_caught_up(alias: str) -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT coalesce(max(position), 0) FROM write_log) "
            "<= (SELECT coalesce(min(position), 0) FROM projection_checkpoints)"
        )
        return bool(cursor.fetchone()[0])


def test_worker_sigkilled_inside_multi_message_transactions_loses_and_duplicates_nothing():
    victim_shard = settings.SHARD_ALIASES[0]
    events = [make_tenant(f"kill-batch-{alias}", shard=alias) for alias in settings.SHARD_ALIASES]
    bank = ledger_tenant(victim_shard)
    api = ApiServer()
    workers = {alias: Worker([queue_name(alias)], name=f"batch-{alias}") for alias in settings.SHARD_ALIASES}
    housekeeping = Worker([maintenance_queue_name()], name="batch-maintenance")
    load = Load(api.port, events, threads=3, batch=200)
    transfers = TransferLoad(api.port, bank)
    transfers.start()
    killed: list[OpenApply] = []
    statuses: list[str] = []
    try:
        load.wait_for_accepted(2_000)
        with _admin() as admin:
            for _ in range(KILLS):
                found: list[OpenApply] = []

                def inside_multi_message_apply(found: list[OpenApply] = found) -> bool:
                    hit = open_multi_message_apply(admin, victim_shard)
                    if hit is not None:
                        # Killed at once, before the transaction can move on.
                        workers[victim_shard].kill()
                        found.append(hit)
                    return hit is not None

                wait_until(
                    inside_multi_message_apply, timeout=90, what="a multi-message apply transaction", interval=0.005
                )
                hit = found[0]
                killed.append(hit)
                # The killed transaction never commits: PostgreSQL aborts it once it sees the client gone.
                wait_until(
                    lambda hit=hit: xact_status(admin, hit.xid) != "in progress",  # type: ignore[misc]
                    timeout=30,
                    what="the killed transaction ended",
                )
                statuses.append(xact_status(admin, hit.xid))
                workers[victim_shard] = Worker([queue_name(victim_shard)], name=f"batch-{victim_shard}")
                load.wait_for_accepted(load.accepted_count() + 1_000)
        result = load.stop()
        accepted_transfers = transfers.stop()
        outcome = count_outcome(
            "worker_sigkill_multi_message",
            events,
            result,
            in_flight_at_fault=max(k.writes for k in killed),
            extra={"killed": [k.__dict__ for k in killed], "statuses": statuses},
        )
        # Every accepted transfer applied or rejected (insufficient funds), once.
        log = WriteLog.objects.using(bank.shard).filter(tenant_id=bank.tenant.id)
        refused = RejectedWrite.objects.using(bank.shard).filter(tenant_id=bank.tenant.id)
        wait_until(
            lambda: (
                log.filter(write_id__in=accepted_transfers).count()
                + refused.filter(write_id__in=accepted_transfers).count()
                >= len(accepted_transfers)
            ),
            timeout=120,
            what="every accepted transfer settled",
        )
        applied_transfers = log.filter(write_id__in=accepted_transfers).count()
        refused_transfers = refused.filter(write_id__in=accepted_transfers).count()
        duplicated_transfers = log.count() - log.values("write_id").distinct().count()
        wait_until(lambda: projector_caught_up(bank.shard), timeout=120, what="projector caught up")
        with connections[bank.shard].cursor() as cursor:
            broken = [v for v in invariant_violations(cursor) if str(v.tenant_id) == str(bank.tenant.id)]
    finally:
        load.stop()
        transfers.stop()
        stop_all(api, workers, housekeeping)

    assert len(killed) == KILLS
    assert all(k.messages >= 2 for k in killed), killed
    assert statuses == ["aborted"] * KILLS, statuses
    assert_exactly_once(outcome)
    assert len(accepted_transfers) > 0
    assert applied_transfers + refused_transfers == len(accepted_transfers)
    assert duplicated_transfers == 0
    assert broken == []
    print(
        f"kills inside transactions of {[k.messages for k in killed]} messages / {[k.writes for k in killed]} writes; "
        f"events accepted {outcome.accepted}, transfers accepted {len(accepted_transfers)} "
        f"({applied_transfers} applied, {refused_transfers} refused)"
    )
