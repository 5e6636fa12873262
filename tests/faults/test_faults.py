"""Faults under load, against the real services: each test breaks something while events, chat messages,
read marks and ledger transfers are being posted (some refused requests retried with the same ids), with
the projector running, then hands the client's history to the checker (``tests/faults/checker.py``).

Every run must end with nothing lost, nothing duplicated in the log, the read models or the balances,
nothing wrongly rejected, nothing applied after a refusal, every read model equal to its recomputation
from the log and every ledger invariant holding; no answer may be a 5xx other than 503 with
``Retry-After``. Each test also proves that its fault struck where it claims.

Run with ``make faults``; each writes its figures to ``var/faults/<fault>.json`` and
``python -m tests.faults.report --update-readme`` puts them in the README's table.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from tests.faults.checker import Verdict, check
from tests.faults.harness import (
    ApiServer,
    BatchWatch,
    PrivateRabbit,
    applied_count,
    in_flight,
    requests_cut,
    shard_unavailable,
    wait_until,
    write_result,
)
from tests.faults.load import Client, History, Load
from tests.stack import Worker, dead_letter_depth, failing_transiently, queue_depth, queues_of_their_own
from writes.models import RejectedWrite, WriteLog
from writes.publisher import publish_apply_message
from writes.queue_policies import prepare_queues
from writes.queues import all_queues, maintenance_queue_name, queue_name, shard_queue

pytestmark = [pytest.mark.faults, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

SHARDS = list(settings.SHARD_ALIASES)
SHARD_OUTAGE_SECONDS = float(os.environ.get("FAULTS_SHARD_OUTAGE_SECONDS", "30"))
#: What the API may answer during a fault (0, no answer, only where the API itself is killed).
REFUSALS = {503, 429}


@pytest.fixture(autouse=True)
def own_queues() -> Iterator[str]:
    """Queues of this test's own, so nothing left in the usual test queues is consumed or counted; their
    policy (bounds and delivery limit) written first, as `make run` does."""
    with queues_of_their_own("faults", policy=True) as prefix:
        yield prefix


def tenants_on_every_shard(name: str) -> list[TenantHandle]:
    return [make_tenant(f"{name}-{alias}", shard=alias) for alias in SHARDS]


def apply_worker(alias: str, environment: dict[str, str] | None = None) -> Worker:
    """A worker for one shard queue, named in ``pg_stat_activity`` (``PGAPPNAME``) so that a test can
    tell its transactions from everyone else's."""
    return Worker(
        [queue_name(alias)],
        name=f"faults-{alias}",
        environment={**(environment or {}), "PGAPPNAME": application_of(alias)},
    )


def application_of(alias: str) -> str:
    return f"faults-apply-{alias}"


def start_workers(environment: dict[str, str] | None = None) -> dict[str, Worker]:
    """One worker per shard queue, as ``make run`` lays them out, and one on the maintenance queue: the
    projector, triggered after every applied batch."""
    workers = {alias: apply_worker(alias, environment) for alias in SHARDS}
    workers["projector"] = Worker([maintenance_queue_name()], name="faults-projector", environment=environment)
    return workers


def stop_all(*things: object) -> None:
    for thing in things:
        if isinstance(thing, dict):
            stop_all(*thing.values())
        elif thing is not None:
            with contextlib.suppress(Exception):
                thing.stop()  # type: ignore[attr-defined]


def judge(fault: str, history: History, tenants: list[TenantHandle], **result: Any) -> Verdict:
    """The checker's verdict on the run, written to ``var/faults/<fault>.json``."""
    verdict = check(history, {str(t.tenant.id): t.shard for t in tenants})
    write_result(fault, verdict, **result)
    return verdict


def assert_clean(verdict: Verdict, *, answers: set[int]) -> None:
    """Every figure at zero, and only the answers this fault may cause."""
    assert verdict.accepted > 0
    assert set(verdict.accepted_by_kind) >= {"event", "message", "transfer", "member"}, verdict.accepted_by_kind
    assert verdict.problems() == {}, (verdict.problems(), verdict.samples)
    assert {int(s) for s in verdict.statuses} <= {202, *answers}, verdict.statuses
    assert verdict.projections_caught_up


def test_worker_sigkilled_inside_a_batch_transaction_five_times_loses_and_duplicates_nothing():
    tenants = tenants_on_every_shard("kill-worker")
    api = ApiServer()
    workers = start_workers()
    load = Load(api.port, tenants)
    watch = BatchWatch()
    kills: list[dict[str, Any]] = []
    try:
        load.wait_for_accepted(2_000)
        peak_in_flight = 0
        applications = [application_of(alias) for alias in SHARDS]
        for _ in range(5):
            deadline = time.monotonic() + 60
            while (seen := next(filter(None, (watch.open_transaction(a, applications) for a in SHARDS)), None)) is None:
                assert time.monotonic() < deadline, "no worker was seen inside an apply transaction"
                time.sleep(0.005)
            # In the same breath: from the row that shows the open transaction to the SIGKILL.
            victim = seen["shard"]
            os.killpg(workers[victim].process.pid, signal.SIGKILL)
            seen["seen_to_kill_ms"] = round((time.monotonic() - seen.pop("seen_at")) * 1000, 2)
            workers[victim].kill()  # reaps it
            backend_gone = functools.partial(watch.backend_gone, int(seen["backend_pid"]))
            wait_until(backend_gone, timeout=30, what="the killed worker's backend ended")
            peak_in_flight = max(peak_in_flight, in_flight(load, tenants))
            kills.append(seen)
            workers[victim] = apply_worker(victim)
            load.wait_for_accepted(load.accepted_count() + 1_000)
        history = load.stop()
        verdict = judge(
            "worker_sigkill", history, tenants, in_flight_at_fault=peak_in_flight, evidence={"kills": kills}
        )
    finally:
        load.stop()
        watch.close()
        stop_all(api, workers)
    assert len(kills) == 5
    assert all(k["state"] in ("active", "idle in transaction") for k in kills), kills
    assert_clean(verdict, answers=REFUSALS)


def test_broker_restart_answers_503_while_down_and_everything_recovers_by_itself():
    rabbit = PrivateRabbit()
    api = workers = load = None
    try:
        rabbit.start()
        environment = {"CELERY_BROKER_URL": rabbit.url}
        with override_settings(CELERY_BROKER_URL=rabbit.url, RABBITMQCTL_NODE=rabbit.node):
            prepare_queues()  # the private node's own policy store
            tenants = tenants_on_every_shard("broker-restart")
            api = ApiServer(environment=environment)
            workers = start_workers(environment)
            load = Load(api.port, tenants)
            load.wait_for_accepted(2_000)
            flying = in_flight(load, tenants)
            rabbit.stop()
            down_at = time.monotonic()
            time.sleep(5)
            # The node is down from ``down_at`` until it starts listening again, which happens somewhat
            # before ``start`` notices: only requests sent and answered inside [down_at, restart_at]
            # were surely answered while it was down.
            restart_at = time.monotonic()
            rabbit.start()
            up_at = rabbit.opened_at
            # The API and the workers reconnect on their own: new writes are accepted again, and applied.
            wait_until(
                lambda: any(a.status == 202 and a.at > up_at for a in list(load.history.attempts)),
                timeout=60,
                what="a 202 after the broker came back",
            )
            load.wait_for_accepted(load.accepted_count() + 1_000)
            history = load.stop()
            while_down = [a for a in history.attempts if down_at < a.started and a.ended < restart_at]
            verdict = judge(
                "broker_restart",
                history,
                tenants,
                in_flight_at_fault=flying,
                evidence={
                    "answers_while_down": len(while_down),
                    "answers_while_down_by_status": sorted({a.status for a in while_down}),
                    "seconds_down": round(up_at - down_at, 1),
                    "seconds_judged_down": round(restart_at - down_at, 1),
                    "stopped_by_sigkill": rabbit.hard_stops,
                },
            )
    finally:
        if load is not None:
            load.stop()
        stop_all(api, workers)
        rabbit.destroy()
    assert while_down, "no request was answered while the broker was down"
    assert {a.status for a in while_down} == {503}, {a.status for a in while_down}
    assert all(a.retry_after for a in while_down)
    assert_clean(verdict, answers=REFUSALS)


def test_shard_unavailable_for_30_seconds_holds_its_writes_and_the_other_shard_keeps_applying():
    tenants = tenants_on_every_shard("shard-down")
    down, up = SHARDS[-1], SHARDS[0]
    tenant_up = next(t for t in tenants if t.shard == up)
    tenant_down = next(t for t in tenants if t.shard == down)
    api = ApiServer()
    workers = start_workers()
    load = Load(api.port, tenants)
    try:
        load.wait_for_accepted(2_000)
        flying = in_flight(load, tenants)
        with shard_unavailable(down):
            started, outage_began = time.monotonic(), datetime.now(UTC)
            applied_up_before = applied_count([tenant_up])
            accepted_down_before = load.accepted_for(tenant_down)
            time.sleep(SHARD_OUTAGE_SECONDS)
            applied_up_during = applied_count([tenant_up]) - applied_up_before
            accepted_down_during = load.accepted_for(tenant_down) - accepted_down_before
            waiting = queue_depth(next(q for q in all_queues() if q.name == queue_name(down)))
            outage, outage_ended = time.monotonic() - started, datetime.now(UTC)
        # The shard's connections (the API's pools among them) come back with some backoff: more time.
        load.wait_for_accepted(load.accepted_count() + 1_000, timeout=120)
        history = load.stop()
        verdict = check(history, {str(t.tenant.id): t.shard for t in tenants})
        # The checker waited until everything was applied. What the down shard's tenant was answered 202
        # for during the outage waited (in the queue, or prefetched by its worker and not acked) and was
        # applied only once the shard was back.
        held = WriteLog.objects.using(down).filter(
            tenant_id=tenant_down.tenant.id, received_at__gte=outage_began, received_at__lt=outage_ended
        )
        held_count = held.count()
        applied_while_down = held.filter(applied_at__lt=outage_ended).count()
        write_result(
            "shard_unavailable",
            verdict,
            in_flight_at_fault=flying,
            evidence={
                "outage_seconds": round(outage, 1),
                "applied_on_other_shard_during_outage": applied_up_during,
                "accepted_for_down_shard_during_outage": accepted_down_during,
                "messages_ready_in_its_queue": waiting,
                "writes_held_until_the_shard_was_back": held_count,
                "writes_applied_while_it_was_down": applied_while_down,
            },
        )
    finally:
        load.stop()
        stop_all(api, workers)
    assert applied_up_during > 0, "the other shard stopped applying"
    assert accepted_down_during > 0, "the API stopped accepting the down shard's writes"
    assert held_count > 0, "no write for the down shard was accepted and held during the outage"
    assert applied_while_down == 0, "the down shard applied writes while it was unavailable"
    assert_clean(verdict, answers=REFUSALS)


def test_api_process_sigkilled_with_requests_in_flight_loses_no_write_it_answered_202():
    tenants = tenants_on_every_shard("kill-api")
    api = ApiServer(workers=2)
    workers = start_workers()
    load = Load(api.port, tenants, threads=6)
    kills: list[dict[str, Any]] = []
    try:
        load.wait_for_accepted(2_000)
        peak = 0
        for _ in range(3):
            victim = api.worker_pids()[0]
            peak = max(peak, in_flight(load, tenants))
            wait_until(lambda: load.history.on_the_wire >= 4, timeout=30, what="requests in flight", interval=0.001)
            on_the_wire = load.history.on_the_wire
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()

            def replaced(victim: int = victim) -> bool:
                return len(api.worker_pids()) == 2 and victim not in api.worker_pids()

            wait_until(replaced, timeout=60, what="uvicorn replaced the killed process")
            load.wait_for_accepted(load.accepted_count() + 1_000)
            cut = requests_cut(load.history, killed_at)
            kills.append(
                {
                    "pid": victim,
                    "requests_on_the_wire": on_the_wire,
                    "requests_cut": len(cut),
                    "writes_in_cut_requests": sum(len(a.ids) for a in cut),
                }
            )
        history = load.stop()
        verdict = judge("api_sigkill", history, tenants, in_flight_at_fault=peak, evidence={"kills": kills})
    finally:
        load.stop()
        stop_all(api, workers)
    assert sum(k["requests_cut"] for k in kills) >= 1, f"no kill cut a request in flight: {kills}"
    assert_clean(verdict, answers={*REFUSALS, 0})


POISON: dict[str, tuple[Callable[[str, str], list[str]], str]] = {
    # kind of poison: (row builder, a word the recorded reason contains)
    "payload_not_json": (lambda i, now: [i, "poison", "{not json", now], "json"),
    "timestamp_unparseable": (lambda i, now: [i, "poison", "{}", "the day after tomorrow"], "time"),
    "key_too_long": (lambda i, now: [i, "k" * 300, "{}", now], "too long"),
    "id_not_a_uuid": (lambda i, now: [f"not-a-uuid-{i}", "poison", "{}", now], "uuid"),
}


def test_poison_writes_are_isolated_and_a_transiently_failing_batch_is_dead_lettered_and_replayed():
    tenants = tenants_on_every_shard("poison")
    poisoned = make_tenant("poisoned", shard=SHARDS[0])
    stuck = make_tenant("stuck", shard=SHARDS[-1])
    api = ApiServer()
    workers = start_workers()
    load = Load(api.port, tenants)
    good_ids: list[str] = []
    bad: dict[str, str] = {}  # id as recorded → expected word in the reason
    try:
        load.wait_for_accepted(1_000)
        flying = in_flight(load, tenants)
        now = datetime.now(UTC).isoformat()
        for n in range(20):
            rows = []
            for kind, (build, word) in POISON.items():
                good = [str(uuid.uuid4()) for _ in range(10)]
                good_ids.extend(good)
                write_id = str(uuid.uuid4())
                row = build(write_id, now)
                bad[row[0]] = word
                rows.extend([[g, f"good-{kind}-{n}", '{"ok": true}', now] for g in good[:5]])
                rows.append(row)
                rows.extend([[g, f"good-{kind}-{n}", '{"ok": true}', now] for g in good[5:]])
            publish_apply_message(
                shard_queue(poisoned.shard), poisoned.shard, [[str(poisoned.tenant.id), "event", now, rows]]
            )
        load.history.published_directly[str(poisoned.tenant.id)] = good_ids

        # A batch that keeps failing for a transient reason: capped retries, then the dead-letter queue.
        stuck_id = str(uuid.uuid4())
        with failing_transiently(stuck.shard, stuck.tenant.id):
            client = Client(api.port, load.history)
            answer = client.post(
                stuck, "/api/v1/events", {"id": stuck_id, "name": "stuck"}, kind="event", ids=[stuck_id]
            )
            client.close()
            assert answer.status == 202
            wait_until(lambda: dead_letter_depth() >= 1, timeout=60, what="the failing batch dead-lettered")
        listing = io.StringIO()
        call_command("replay_dead_letters", "--list", stdout=listing)
        dead = dead_letter_depth()
        call_command("replay_dead_letters", stdout=io.StringIO())

        load.wait_for_accepted(load.accepted_count() + 1_000)
        history = load.stop()
        verdict = judge(
            "poison_writes",
            history,
            [*tenants, poisoned, stuck],
            in_flight_at_fault=flying,
            evidence={"poison_rows": len(bad), "good_rows_beside_poison": len(good_ids), "dead_lettered": dead},
        )
        recorded = {
            str(r.write_id): r.reason
            for r in RejectedWrite.objects.using(poisoned.shard).filter(tenant_id=poisoned.tenant.id)
        }
    finally:
        load.stop()
        stop_all(api, workers)
    assert_clean(verdict, answers=REFUSALS)
    assert WriteLog.objects.using(poisoned.shard).filter(write_id__in=good_ids).count() == len(good_ids)
    assert len(recorded) == len(bad)
    for write_id, word in bad.items():
        matching = [reason for recorded_id, reason in recorded.items() if write_id in (recorded_id, *reason.split("'"))]
        assert matching, f"poison row {write_id} was not recorded"
        assert word in matching[0].lower(), matching[0]
    assert dead >= 1
    assert "reason=rejected" in listing.getvalue()
    assert WriteLog.objects.using(stuck.shard).filter(write_id=stuck_id).count() == 1
