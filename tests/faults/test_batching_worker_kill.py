"""SIGKILL of a worker while one open transaction holds several messages, under the mixed load of
``test_faults.py`` (events, chat messages, members, read marks, ledger transfers; refused requests
retried with the same ids), judged by the history checker like every other fault test.

A worker applies several prefetched messages of a shard in one transaction and acks them only after
COMMIT (``writes.consumer``, ``writes.apply.apply_messages``). The worker-kill test of ``test_faults.py``
kills inside any apply transaction; this one kills only inside a transaction of two messages or more,
and proves it from PostgreSQL itself: the rows the killed transaction had inserted into
``publish_fates`` (its claims, one per message) are read from the table's pages by ``pageinspect`` (see
``harness.MultiMessageWatch``), ``pg_xact_status`` reports that transaction aborted, and every claimed
message is found decided later by another transaction: redelivered and applied once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from tests.conftest import ALL_DATABASES
from tests.faults.harness import ApiServer, MultiMessageWatch, in_flight, wait_until
from tests.faults.load import Load
from tests.faults.test_faults import (
    REFUSALS,
    SHARDS,
    apply_worker,
    assert_clean,
    judge,
    own_queues,  # noqa: F401 (autouse fixture: this test's own queues)
    start_workers,
    stop_all,
    tenants_on_every_shard,
)

pytestmark = [pytest.mark.faults, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

KILLS = 5
#: Kills allowed to miss (the transaction committed between being seen and the signal) beyond ``KILLS``.
SPARE_KILLS = 2
FAULT = "worker_sigkill_multi_message"


def stop_together(*things: object) -> None:
    """``stop_all``, each in a thread of its own: a worker's warm shutdown can take seconds, and they
    need not wait for one another."""
    threads = [threading.Thread(target=stop_all, args=(thing,)) for thing in things]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def kill_inside_multi_message_transaction(
    watch: MultiMessageWatch, workers: dict[str, Any], *, timeout: float = 60
) -> dict[str, Any]:
    """Wait for a worker inside an apply transaction of two or more messages, SIGKILL it at once, then
    read what that transaction had claimed and how it ended."""
    deadline = time.monotonic() + timeout
    while (seen := watch.multi_message_apply(at_least=2)) is None:
        assert time.monotonic() < deadline, "no worker was seen inside a multi-message apply transaction"
        time.sleep(0.002)
    victim, xid = seen["shard"], seen["xid"]
    os.killpg(workers[victim].process.pid, signal.SIGKILL)
    seen["seen_to_kill_ms"] = round((time.monotonic() - seen.pop("seen_at")) * 1000, 2)
    # Read at once, before a new worker touches the table: the killed transaction's rows are still there
    # (in progress or aborted), each stamped with its id.
    claimed = watch.claimed_by(victim, xid)
    seen["messages_claimed"] = len(claimed)
    seen["claimed_message_ids"] = claimed
    seen["ledger_account_rows_locked_or_written"] = watch.rows_touched_by(victim, "ledger_accounts", xid)
    workers[victim].kill()  # reaps it
    wait_until(lambda: watch.backend_gone(victim, seen["backend_pid"]), timeout=30, what="the killed backend ended")
    seen["transaction"] = watch.status(victim, xid)
    return seen


def decided_again(watch: MultiMessageWatch, shard: str, message_ids: list[str], *, deadline: float) -> dict[str, int]:
    """The fates ``publish_fates`` holds now for messages a killed transaction had claimed, once all of
    them have one again (or at ``deadline``, a ``time.monotonic()``): each must have come back and been
    claimed by a transaction that committed, i.e. redelivered and applied by the next worker (or
    abandoned by the API, had its confirm come too late)."""
    while sum((fates := watch.fates(shard, message_ids)).values()) < len(message_ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return fates


def test_worker_sigkilled_inside_multi_message_transactions_loses_and_duplicates_nothing():
    started = time.monotonic()
    tenants = tenants_on_every_shard("kill-multi")
    api = ApiServer()
    workers = start_workers()
    load = Load(api.port, tenants)
    watch = MultiMessageWatch(SHARDS)
    kills: list[dict[str, Any]] = []
    missed: list[dict[str, Any]] = []
    try:
        load.wait_for_accepted(2_000)
        loaded = time.monotonic()
        peak_in_flight = 0
        while len(kills) < KILLS and len(missed) <= SPARE_KILLS:
            seen = kill_inside_multi_message_transaction(watch, workers)
            # A transaction whose COMMIT was already on its way when the signal came is no kill inside it.
            (kills if seen["transaction"] == "aborted" else missed).append(seen)
            peak_in_flight = max(peak_in_flight, in_flight(load, tenants))
            workers[seen["shard"]] = apply_worker(seen["shard"])
            load.wait_for_accepted(load.accepted_count() + 1_000)
        history = load.stop()
        killed = time.monotonic()
        deadline = time.monotonic() + 30
        for kill in kills:
            kill["fates_after"] = decided_again(watch, kill["shard"], kill["claimed_message_ids"], deadline=deadline)
        verdict = judge(
            FAULT,
            history,
            tenants,
            in_flight_at_fault=peak_in_flight,
            evidence={"kills": kills, "missed": missed},
        )
        judged = time.monotonic()
    finally:
        load.stop()
        watch.close()
        stop_together(api, *workers.values())
    assert len(kills) == KILLS, f"{len(missed)} kills came after the transaction committed: {missed}"
    claims = [k["messages_claimed"] for k in kills]
    assert all(n >= 2 for n in claims), f"messages claimed by the killed transactions: {claims}, not 2 or more each"
    assert all(k["transaction"] == "aborted" for k in kills)
    assert_clean(verdict, answers=REFUSALS)
    # What the kills interrupted came back: every claimed message decided by a committed transaction.
    assert all(sum(k["fates_after"].values()) == k["messages_claimed"] for k in kills), [
        k["fates_after"] for k in kills
    ]
    print(
        f"{FAULT}: kills inside transactions that had claimed {[k['messages_claimed'] for k in kills]} messages "
        f"(named {[k['writes_named'] for k in kills]} writes), all aborted, {len(missed)} missed; "
        f"accepted {verdict.accepted:,}, applied {verdict.applied:,}, rejected {verdict.legitimately_rejected:,}, "
        f"lost {verdict.lost}, duplicated {verdict.duplicated}; seconds: start and load {loaded - started:.1f}, "
        f"kills {killed - loaded:.1f}, settle and check {judged - killed:.1f}"
    )
