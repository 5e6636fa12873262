"""Faults under load, against the real services: each test breaks something while writes are being
posted, then counts. Every write answered 202 must be applied exactly once (or recorded as rejected
with its reason); none may be applied twice.

Run with ``make faults`` (about four minutes); each writes its numbers to ``var/faults/<fault>.json``.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings
from kombu import Connection

from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from tests.faults.harness import (
    ApiServer,
    Load,
    PrivateRabbit,
    applied_count,
    backends_mid_transaction,
    count_outcome,
    in_flight,
    shard_unavailable,
    wait_until,
)
from tests.stack import Worker, dead_letter_depth, failing_transiently, queue_depth
from writes.models import RejectedWrite, WriteLog
from writes.publisher import publish_apply_message
from writes.queues import all_queues, dead_letter_queue, queue_name, shard_queue

pytestmark = [pytest.mark.faults, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

SHARDS = list(settings.SHARD_ALIASES)
SHARD_OUTAGE_SECONDS = float(os.environ.get("FAULTS_SHARD_OUTAGE_SECONDS", "30"))


@pytest.fixture(autouse=True)
def own_queues() -> Iterator[str]:
    """Queues of this test's own, so nothing left in the usual test queues is consumed or counted."""
    prefix = f"faults.{uuid.uuid4().hex[:8]}"
    with override_settings(WRITES_QUEUE_PREFIX=prefix):
        yield prefix
        with contextlib.suppress(Exception), Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as connection:
            channel = connection.channel()
            for queue in [*all_queues(), dead_letter_queue()]:
                queue.bind(channel).delete()


def tenants_on_every_shard(name: str) -> list[TenantHandle]:
    return [make_tenant(f"{name}-{alias}", shard=alias) for alias in SHARDS]


def start_workers(environment: dict[str, str] | None = None) -> dict[str, Worker]:
    """One worker per shard queue, as ``make run`` lays them out."""
    return {alias: Worker([queue_name(alias)], name=f"faults-{alias}", environment=environment) for alias in SHARDS}


def stop_all(*things: object) -> None:
    for thing in things:
        if isinstance(thing, dict):
            stop_all(*thing.values())
        elif thing is not None:
            with contextlib.suppress(Exception):
                thing.stop()  # type: ignore[attr-defined]


def assert_exactly_once(outcome) -> None:
    assert outcome.accepted > 0
    assert outcome.lost == 0, outcome
    assert outcome.duplicated == 0, outcome


def test_worker_sigkilled_mid_batch_five_times_loses_and_duplicates_nothing():
    tenants = tenants_on_every_shard("kill-worker")
    api = ApiServer()
    workers = start_workers()
    load = Load(api.port, tenants, batch=200)
    try:
        load.wait_for_accepted(2_000)
        kills: list[str] = []
        peak_in_flight = 0
        for _ in range(5):
            victim: list[str] = []

            def mid_batch(victim: list[str] = victim) -> bool:
                victim[:] = [alias for alias in SHARDS if backends_mid_transaction(alias)][:1]
                return bool(victim)

            wait_until(mid_batch, timeout=60, what="a worker inside an apply transaction", interval=0.01)
            peak_in_flight = max(peak_in_flight, in_flight(load, tenants))
            workers[victim[0]].kill()
            kills.append(victim[0])
            workers[victim[0]] = Worker([queue_name(victim[0])], name=f"faults-{victim[0]}")
            load.wait_for_accepted(load.accepted_count() + 500)
        result = load.stop()
        outcome = count_outcome("worker_sigkill", tenants, result, in_flight_at_fault=peak_in_flight,
                                extra={"kills": kills})  # fmt: skip
    finally:
        load.stop()
        stop_all(api, workers)
    assert len(kills) == 5
    assert_exactly_once(outcome)


def test_broker_restart_answers_503_while_down_and_everything_recovers_by_itself():
    rabbit = PrivateRabbit()
    api = workers = load = None
    try:
        rabbit.start()
        environment = {"CELERY_BROKER_URL": rabbit.url}
        with override_settings(CELERY_BROKER_URL=rabbit.url):
            tenants = tenants_on_every_shard("broker-restart")
            api = ApiServer(environment=environment)
            workers = start_workers(environment)
            load = Load(api.port, tenants, batch=200)
            load.wait_for_accepted(2_000)
            flying = in_flight(load, tenants)
            rabbit.stop()
            down_at = time.monotonic()
            time.sleep(5)
            rabbit.start()
            up_at = rabbit.opened_at
            # The API and the workers reconnect on their own: new writes are accepted again, and applied.
            wait_until(
                lambda: any(r.status == 202 and r.at > up_at for r in load.result.responses),
                timeout=60,
                what="a 202 after the broker came back",
            )
            load.wait_for_accepted(load.accepted_count() + 1_000)
            result = load.stop()
            while_down = [r for r in result.responses if down_at + 0.5 < r.at < up_at]
            outcome = count_outcome(
                "broker_restart",
                tenants,
                result,
                in_flight_at_fault=flying,
                timeout=180,
                extra={
                    "answers_while_down": len(while_down),
                    "seconds_down": round(up_at - down_at, 1),
                    "stopped_by_sigkill": rabbit.hard_stops,
                },
            )
    finally:
        if load is not None:
            load.stop()
        stop_all(api, workers)
        rabbit.destroy()
    assert while_down, "no request was answered while the broker was down"
    assert {r.status for r in while_down} == {503}, {r.status for r in while_down}
    assert all(r.retry_after for r in while_down)
    assert_exactly_once(outcome)


def test_shard_unavailable_for_30_seconds_holds_its_writes_and_the_other_shard_keeps_applying():
    tenants = tenants_on_every_shard("shard-down")
    down, up = SHARDS[-1], SHARDS[0]
    tenant_up = next(t for t in tenants if t.shard == up)
    tenant_down = next(t for t in tenants if t.shard == down)
    api = ApiServer()
    workers = start_workers()
    load = Load(api.port, tenants, batch=200)
    try:
        load.wait_for_accepted(2_000)
        flying = in_flight(load, tenants)
        with shard_unavailable(down):
            started = time.monotonic()
            applied_up_before = applied_count([tenant_up])
            accepted_down_before = len(load.result.accepted[tenant_down.tenant.id])
            time.sleep(SHARD_OUTAGE_SECONDS)
            applied_up_during = applied_count([tenant_up]) - applied_up_before
            accepted_down_during = len(load.result.accepted[tenant_down.tenant.id]) - accepted_down_before
            waiting = queue_depth(next(q for q in all_queues() if q.name == queue_name(down)))
            outage = time.monotonic() - started
        load.wait_for_accepted(load.accepted_count() + 1_000)
        result = load.stop()
        outcome = count_outcome(
            "shard_unavailable",
            tenants,
            result,
            in_flight_at_fault=flying,
            extra={
                "outage_seconds": round(outage, 1),
                "applied_on_other_shard_during_outage": applied_up_during,
                "accepted_for_down_shard_during_outage": accepted_down_during,
                "messages_waiting_in_its_queue": waiting,
            },
        )
    finally:
        load.stop()
        stop_all(api, workers)
    assert applied_up_during > 0, "the other shard stopped applying"
    assert accepted_down_during > 0, "the API stopped accepting the down shard's writes"
    assert waiting > 0, "the down shard's writes were not waiting in its queue"
    assert_exactly_once(outcome)


def test_api_process_sigkilled_loses_no_write_it_answered_202():
    tenants = tenants_on_every_shard("kill-api")
    api = ApiServer(workers=2)
    workers = start_workers()
    load = Load(api.port, tenants, batch=200)
    try:
        load.wait_for_accepted(2_000)
        peak = 0
        killed = []
        for _ in range(2):
            victim = api.worker_pids()[0]
            peak = max(peak, in_flight(load, tenants))
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

            def replaced(victim: int = victim) -> bool:
                return len(api.worker_pids()) == 2 and victim not in api.worker_pids()

            wait_until(
                replaced,
                timeout=60,
                what="uvicorn replaced the killed process",
            )
            load.wait_for_accepted(load.accepted_count() + 1_000)
        result = load.stop()
        outcome = count_outcome("api_sigkill", tenants, result, in_flight_at_fault=peak,
                                extra={"api_processes_killed": len(killed)})  # fmt: skip
    finally:
        load.stop()
        stop_all(api, workers)
    assert_exactly_once(outcome)


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
    load = Load(api.port, tenants, batch=200)
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

        # A batch that keeps failing for a transient reason: capped retries, then the dead-letter queue.
        stuck_id = str(uuid.uuid4())
        with failing_transiently(stuck.shard, stuck.tenant.id):
            response = stuck.post_json("/api/v1/events", {"id": stuck_id, "name": "stuck"})
            assert response.status_code == 202
            wait_until(lambda: dead_letter_depth() >= 1, timeout=60, what="the failing batch dead-lettered")
        listing = io.StringIO()
        call_command("replay_dead_letters", "--list", stdout=listing)
        dead = dead_letter_depth()
        call_command("replay_dead_letters", stdout=io.StringIO())

        load.wait_for_accepted(load.accepted_count() + 1_000)
        result = load.stop()
        result.accepted[stuck.tenant.id] = [stuck_id]
        result.accepted[poisoned.tenant.id] = good_ids
        outcome = count_outcome(
            "poison_writes",
            [*tenants, poisoned, stuck],
            result,
            in_flight_at_fault=flying,
            extra={"poison_rows": len(bad), "good_rows_beside_poison": len(good_ids), "dead_lettered": dead},
        )
        recorded = {
            str(r.write_id): r.reason
            for r in RejectedWrite.objects.using(poisoned.shard).filter(tenant_id=poisoned.tenant.id)
        }
    finally:
        load.stop()
        stop_all(api, workers)
    assert_exactly_once(outcome)
    assert outcome.rejected == 0  # every accepted write was good: none of them is among the rejected
    assert WriteLog.objects.using(poisoned.shard).filter(write_id__in=good_ids).count() == len(good_ids)
    assert len(recorded) == len(bad)
    for write_id, word in bad.items():
        matching = [reason for recorded_id, reason in recorded.items() if write_id in (recorded_id, *reason.split("'"))]
        assert matching, f"poison row {write_id} was not recorded"
        assert word in matching[0].lower(), matching[0]
    assert dead >= 1
    assert "reason=rejected" in listing.getvalue()
    assert WriteLog.objects.using(stuck.shard).filter(write_id=stuck_id).count() == 1
