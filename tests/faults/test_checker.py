"""The fault checker's control test: a clean history passes, and each planted fault is caught (a loss, a
duplicate in each read model, a write applied after a refusal, a wrong rejection, a write nobody sent,
a broken ledger invariant). Writes go through the real applier and projector, in process."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connections

from readmodels.projector import project_shard
from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from tests.faults.checker import Verdict, check
from tests.faults.load import Attempt, History, canonical
from writes.apply import apply_batch

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

SHARD = "shard_0"


class Run:
    """A small run: writes of every kind applied and projected, and the history a client would hold."""

    def __init__(self, tenant: TenantHandle) -> None:
        self.tenant = tenant
        self.tenant_id = str(tenant.tenant.id)
        self.history = History()
        with connections[SHARD].cursor() as cursor:
            for account, guarded in (("equity", False), ("alice", True), ("shop", False)):
                cursor.execute(
                    "INSERT INTO ledger_accounts (tenant_id, account_id, currency, no_overdraft, balance, created_at)"
                    " VALUES (%s, %s, 'EUR', %s, %s, now())",
                    [self.tenant_id, account, guarded, 0 if guarded else None],
                )
        self.event_ids = self.send("event", [[self.new_id(), f"signup-{n % 2}", "{}", self.now()] for n in range(6)])
        self.send("member", [[self.new_id(), "room", json.dumps({"user_ids": ["ann", "bob"]}), self.now()]])
        self.send(
            "message",
            [
                [self.new_id(), "room", json.dumps({"sender_id": "ann", "body": f"hi {n}"}), self.now()]
                for n in range(3)
            ],
        )
        self.send("transfer", [self.transfer("equity", "alice", 100), self.transfer("alice", "shop", 30)])
        self.overdraft = self.transfer("alice", "shop", 500)
        self.history.rejectable[self.overdraft[0]] = frozenset({"insufficient_funds"})
        self.send("transfer", [self.overdraft])
        project_shard(SHARD)

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    @staticmethod
    def now() -> str:
        return datetime.now(UTC).isoformat()

    def transfer(self, debit: str, credit: str, amount: int) -> list[str]:
        transfer_id = self.new_id()
        payload = {"debit_account": debit, "credit_account": credit, "amount": amount, "currency": "EUR"}
        return [transfer_id, transfer_id, json.dumps(payload), self.now()]

    def answer(self, kind: str, ids: list[str], status: int, code: str | None = None) -> None:
        error_ids = ids if status >= 300 else None
        moment = time.monotonic()
        retry_after = "1" if status in (429, 503) else None
        self.history.record(Attempt(self.tenant_id, kind, ids, status, code, retry_after, error_ids, moment, moment, 1))

    def apply(self, kind: str, rows: list[list[Any]]) -> None:
        apply_batch(shard=SHARD, groups=[[self.tenant_id, kind, self.now(), rows]])

    def send(self, kind: str, rows: list[list[Any]], *, status: int = 202) -> list[str]:
        """Rows the client sent and the API answered with ``status``; applied as the worker would."""
        ids = [row[0] for row in rows]
        self.answer(kind, ids, status, None if status == 202 else "broker_unavailable")
        self.apply(kind, rows)
        return ids

    def verdict(self) -> Verdict:
        project_shard(SHARD)
        return check(self.history, {self.tenant_id: SHARD}, settle_timeout=5, projection_timeout=5)

    def execute(self, sql: str, params: list[Any]) -> None:
        with connections[SHARD].cursor() as cursor:
            cursor.execute(sql, params)
            assert cursor.rowcount >= 1, sql


@pytest.fixture
def run() -> Run:
    return Run(make_tenant("checked", shard=SHARD))


def test_checker_passes_a_clean_run(run):
    verdict = run.verdict()
    assert verdict.problems() == {}, verdict.samples
    assert verdict.accepted == 6 + 1 + 3 + 3
    assert verdict.applied == 12
    assert verdict.legitimately_rejected == 1
    assert verdict.read_model_rows_checked > 0
    assert verdict.duplicated == 0


def test_checker_catches_a_write_answered_202_that_never_arrived(run):
    run.answer("event", [run.new_id()], 202)
    verdict = run.verdict()
    assert verdict.lost == 1
    assert set(verdict.problems()) == {"lost"}


def test_checker_catches_a_write_applied_although_its_request_was_refused(run):
    run.send("event", [[run.new_id(), "late", "{}", run.now()]], status=503)
    verdict = run.verdict()
    assert verdict.refused_then_applied == 1
    assert set(verdict.problems()) == {"refused_then_applied"}


def test_checker_accepts_a_write_that_was_refused_and_never_applied(run):
    run.answer("event", [run.new_id()], 503, "queue_full")
    verdict = run.verdict()
    assert verdict.problems() == {}
    assert verdict.refused == 1


def test_checker_catches_a_wrong_rejection_and_a_write_nobody_sent(run):
    wrongly = run.new_id()
    run.answer("event", [wrongly], 202)
    run.execute(
        "INSERT INTO rejected_writes (tenant_id, write_id, kind, key, payload, code, reason, rejected_at)"
        " VALUES (%s, %s, 'event', 'x', '{}', 'invalid', 'planted', now())",
        [run.tenant_id, wrongly],
    )
    run.apply("event", [[run.new_id(), "unsent", "{}", run.now()]])
    verdict = run.verdict()
    assert verdict.wrongly_rejected == 1
    assert verdict.applied_never_sent == 1
    assert verdict.lost == 0  # a wrong rejection is not hidden as "not lost", nor counted as a loss twice


def test_checker_catches_a_write_both_applied_and_rejected(run):
    run.execute(
        "INSERT INTO rejected_writes (tenant_id, write_id, kind, key, payload, code, reason, rejected_at)"
        " VALUES (%s, %s, 'event', 'x', '{}', 'invalid', 'planted', now())",
        [run.tenant_id, run.event_ids[0]],
    )
    verdict = run.verdict()
    assert verdict.applied_and_rejected == 1
    assert verdict.applied == 11


PLANTED_DUPLICATES: dict[str, tuple[str, Callable[[Run], tuple[str, list[Any]]]]] = {
    # read model: (figure that must see it, the statement that counts one write twice)
    "event_counts": (
        "duplicated_in_read_models",
        lambda r: (
            "UPDATE event_counts_hourly SET count = count + 1 WHERE tenant_id = %s AND name = 'signup-0'",
            [r.tenant_id],
        ),
    ),
    "chat_messages": (
        "duplicated_in_read_models",
        lambda r: (
            "INSERT INTO chat_messages (position, tenant_id, conversation_id, seq, write_id, sender_id, body, sent_at)"
            " SELECT position + 100000, tenant_id, conversation_id, seq + 100, write_id, sender_id, body, sent_at"
            " FROM chat_messages WHERE tenant_id = %s AND seq = 1",
            [r.tenant_id],
        ),
    ),
    "chat_summaries": (
        "duplicated_in_read_models",
        lambda r: (
            "UPDATE chat_conversations SET message_count = message_count + 1 WHERE tenant_id = %s",
            [r.tenant_id],
        ),
    ),
    "chat_unread_counts": (
        "read_model_mismatches",
        lambda r: (
            "UPDATE chat_inboxes SET unread_count = unread_count + 1 WHERE tenant_id = %s AND user_id = 'bob'",
            [r.tenant_id],
        ),
    ),
    "balances": (
        "duplicated_in_balances",
        lambda r: (
            "UPDATE ledger_balances SET balance = balance + 30, transfer_count = transfer_count + 1"
            " WHERE tenant_id = %s AND account_id = 'shop'",
            [r.tenant_id],
        ),
    ),
}


@pytest.mark.parametrize("read_model", sorted(PLANTED_DUPLICATES))
def test_checker_catches_a_write_counted_twice_in_a_read_model(run, read_model):
    figure, statement = PLANTED_DUPLICATES[read_model]
    run.execute(*statement(run))
    verdict = run.verdict()
    assert getattr(verdict, figure) >= 1, verdict
    assert verdict.read_model_mismatches >= 1, verdict
    assert verdict.lost == verdict.refused_then_applied == 0


def test_checker_catches_a_currency_that_no_longer_sums_to_zero_and_a_guarded_balance_off_its_transfers(run):
    run.execute(
        "UPDATE ledger_balances SET balance = balance + 1 WHERE tenant_id = %s AND account_id = 'equity'",
        [run.tenant_id],
    )
    run.execute(
        "UPDATE ledger_accounts SET balance = balance + 5 WHERE tenant_id = %s AND account_id = 'alice'",
        [run.tenant_id],
    )
    verdict = run.verdict()
    checks = {v["check"] for v in verdict.samples["ledger_invariant_violations"]}
    assert checks == {"currency_sum", "guarded_balance"}


def test_checker_recognises_the_server_id_write_of_a_request_that_got_no_answer(run):
    body = {"user_id": "bob", "up_to": 2}
    moment = time.monotonic()
    fingerprint = ("read", "room", canonical(body))
    run.history.record(Attempt(run.tenant_id, "read", [], 0, None, None, None, moment, moment, 1, fingerprint))
    run.apply("read", [[run.new_id(), "room", json.dumps(body), run.now()]])
    verdict = run.verdict()
    assert verdict.problems() == {}
    assert verdict.indeterminate_applied == 1
    # A second such write was never sent: one unanswered request accounts for one write only.
    run.apply("read", [[run.new_id(), "room", json.dumps(body), run.now()]])
    assert run.verdict().applied_never_sent == 1
