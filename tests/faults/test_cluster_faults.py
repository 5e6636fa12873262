"""Faults of a single node, with none left to fail alone: a three-node RabbitMQ cluster (quorum queues with
three replicas) and a shard with a synchronous streaming standby, all private to the test, under the same
load and the same checker as ``test_faults.py``.

Each writes ``var/faults/<fault>.json`` with the checker's figures, and measures how long writes were
refused (or, for the shard, how long nothing was applied): the longest stretch without a 202 after the
fault, and the time from the fault to the first write accepted or applied again.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from tests.faults.harness import (
    ApiServer,
    RabbitCluster,
    ReplicatedShard,
    applied_count,
    in_flight,
    shard_served_by,
    wait_until,
    write_result,
)
from tests.faults.load import History, Load
from tests.faults.test_faults import (
    REFUSALS,
    SHARDS,
    assert_clean,
    judge,
    own_queues,
    start_workers,
    stop_all,
    tenants_on_every_shard,
)
from writes.queues import queue_name
from writes.topology import shard_server_roles

pytestmark = [pytest.mark.faults]

__all__ = ["own_queues", "write_result"]


@pytest.fixture
def cluster() -> Iterator[RabbitCluster]:
    """Three nodes joined into a cluster, with queues of the test's own prefix (the cluster is thrown away)."""
    nodes = RabbitCluster(3)
    prefix = f"faults.{uuid.uuid4().hex[:8]}"
    try:
        nodes.start()
        with override_settings(CELERY_BROKER_URL=nodes.url, WRITES_QUEUE_PREFIX=prefix, WRITES_QUEUE_REPLICAS=3):
            yield nodes
    finally:
        nodes.destroy()


def cluster_environment(cluster: RabbitCluster) -> dict[str, str]:
    return {"CELERY_BROKER_URL": cluster.url, "WRITES_QUEUE_REPLICAS": "3", "WORKER_REMOTE_CONTROL": "0"}


def accepted_times(history: History, since: float) -> list[float]:
    with history.lock:
        return sorted(a.at for a in history.attempts if a.status == 202 and a.at >= since)


def refusal_figures(history: History, since: float, until: float) -> dict[str, Any]:
    """How long writes were refused after ``since``: the longest stretch without a 202 (from ``since``),
    the seconds to the first 202, and the answers other than 202 in between."""
    times = [since, *[t for t in accepted_times(history, since) if t <= until]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    with history.lock:
        refused = [a for a in history.attempts if a.status != 202 and since <= a.ended <= until]
    return {
        "seconds_without_a_202": round(max(gaps, default=until - since), 2),
        "seconds_to_first_202": round(times[1] - since, 2) if len(times) > 1 else None,
        "refused_answers": len(refused),
        "refused_by_status": sorted({a.status for a in refused}),
    }


def shard_leaders(cluster: RabbitCluster) -> dict[str, str]:
    leaders = cluster.queue_leaders(queue_name(""))
    return {queue: leader for queue, leader in leaders.items() if queue in {queue_name(a) for a in SHARDS}}


@pytest.mark.django_db(transaction=True, databases=["default", *SHARDS])
def test_broker_node_leading_the_shard_queues_sigkilled_three_times_loses_and_duplicates_nothing(cluster):
    tenants = tenants_on_every_shard("broker-node-kill")
    environment = cluster_environment(cluster)
    api = workers = load = None
    kills: list[dict[str, Any]] = []
    try:
        api = ApiServer(environment=environment)
        workers = start_workers(environment)
        load = Load(api.port, tenants)
        load.wait_for_accepted(1_500)
        wait_until(lambda: len(shard_leaders(cluster)) == len(SHARDS), timeout=30, what="shard queues declared")
        peak = 0
        for _ in range(3):
            leaders = shard_leaders(cluster)
            leader = max(set(leaders.values()), key=list(leaders.values()).count)
            victim = cluster.node_named(leader)
            peak = max(peak, in_flight(load, tenants))
            cluster.kill(victim)
            killed_at = time.monotonic()
            load.wait_for_accepted(load.accepted_count() + 800, timeout=60)
            figures = refusal_figures(load.history, killed_at, time.monotonic())
            survivors_lead = shard_leaders(cluster)
            kills.append(
                {
                    "node": leader,
                    "queues_it_led": sorted(q for q, n in leaders.items() if n == leader),
                    "leaders_after": survivors_lead,
                    **figures,
                }
            )
            cluster.restart(victim)  # back before the next kill: two nodes down is the next test's fault
        history = load.stop()
        verdict = judge(
            "broker_node_kill",
            history,
            tenants,
            in_flight_at_fault=peak,
            evidence={
                "kills": kills,
                "seconds_without_a_202": max(k["seconds_without_a_202"] for k in kills),
            },
        )
    finally:
        if load is not None:
            load.stop()
        stop_all(api, workers)
    assert len(kills) == 3
    for kill in kills:
        assert kill["queues_it_led"], kill
        assert all(leader != kill["node"] for leader in kill["leaders_after"].values()), kill
    assert max(k["seconds_without_a_202"] for k in kills) < 10, kills
    assert_clean(verdict, answers=REFUSALS)


@pytest.mark.django_db(transaction=True, databases=["default", *SHARDS])
def test_broker_quorum_lost_answers_503_and_writes_resume_by_themselves_when_a_node_returns(cluster):
    tenants = tenants_on_every_shard("broker-quorum-loss")
    environment = cluster_environment(cluster)
    api = workers = load = None
    try:
        api = ApiServer(environment=environment)
        workers = start_workers(environment)
        load = Load(api.port, tenants)
        load.wait_for_accepted(1_500)
        flying = in_flight(load, tenants)
        first, second, survivor = cluster.nodes
        second.stop()
        third_down = time.monotonic()
        first.stop()
        lost_at = time.monotonic()
        time.sleep(6)
        returning_at = time.monotonic()
        cluster.restart(first)  # the last node stopped comes back: quorum again, 2 of 3
        back_at = first.opened_at
        wait_until(lambda: bool(accepted_times(load.history, back_at)), timeout=60, what="a 202 after a node returned")
        resumed_at = accepted_times(load.history, back_at)[0]
        load.wait_for_accepted(load.accepted_count() + 800, timeout=60)
        history = load.stop()
        while_lost = [a for a in history.attempts if lost_at < a.started and a.ended < returning_at]
        figures = refusal_figures(history, lost_at, resumed_at)
        verdict = judge(
            "broker_quorum_loss",
            history,
            tenants,
            in_flight_at_fault=flying,
            evidence={
                "nodes_down": [second.node, first.node],
                "node_left": survivor.node,
                "seconds_second_node_down_before_quorum_lost": round(lost_at - third_down, 1),
                "seconds_without_quorum": round(back_at - lost_at, 1),
                "answers_while_without_quorum": len(while_lost),
                "answers_while_without_quorum_by_status": sorted({a.status for a in while_lost}),
                "accepted_while_without_quorum": sum(a.status == 202 for a in while_lost),
                "seconds_from_node_back_to_first_202": round(resumed_at - back_at, 2),
                **figures,
            },
        )
    finally:
        if load is not None:
            load.stop()
        stop_all(api, workers)
    assert while_lost, "no request was answered while the cluster had no quorum"
    assert {a.status for a in while_lost} == {503}, {a.status for a in while_lost}
    assert all(a.retry_after for a in while_lost)
    assert resumed_at - back_at < 30
    assert_clean(verdict, answers=REFUSALS)


@pytest.fixture
def replicated() -> Iterator[ReplicatedShard]:
    shard = ReplicatedShard()
    try:
        yield shard
    finally:
        shard.destroy()


@pytest.mark.django_db(transaction=True, databases=["default", *SHARDS])
def test_shard_primary_sigkilled_and_its_standby_promoted_workers_continue_on_it(own_queues, replicated):
    failing = SHARDS[-1]
    with shard_served_by(failing, replicated):
        tenants = tenants_on_every_shard("shard-failover")
        on_failing = [t for t in tenants if t.shard == failing]
        api = workers = load = None
        try:
            api = ApiServer()
            workers = start_workers()
            load = Load(api.port, tenants)
            load.wait_for_accepted(2_000)
            flying = in_flight(load, tenants)
            sync_state = replicated.primary.execute("SELECT application_name, sync_state FROM pg_stat_replication")
            applied_before = applied_count(on_failing)
            roles_before = [r.role for r in shard_server_roles(failing)]
            replicated.primary.kill()
            killed_at = time.monotonic()
            replicated.standby.promote()
            promoted_at = time.monotonic()
            wait_until(
                lambda: applied_count(on_failing, attempts=30) > applied_before,
                timeout=60,
                what="a write applied on the promoted standby",
                interval=0.1,
            )
            applying_again_at = time.monotonic()
            load.wait_for_accepted(load.accepted_count() + 1_000, timeout=90)
            history = load.stop()
            figures = refusal_figures(history, killed_at, time.monotonic())
            in_recovery = replicated.standby.execute("SELECT pg_is_in_recovery()")[0][0]
            roles_after = [r.role for r in shard_server_roles(failing)]
            verdict = judge(
                "shard_failover",
                history,
                tenants,
                in_flight_at_fault=flying,
                evidence={
                    "replication_before_kill": [list(row) for row in sync_state],
                    "applied_on_it_before_kill": applied_before,
                    "seconds_kill_to_promoted": round(promoted_at - killed_at, 2),
                    "seconds_without_applying": round(applying_again_at - killed_at, 2),
                    "promoted_in_recovery": in_recovery,
                    "server_roles_before": roles_before,
                    "server_roles_after": roles_after,
                    **figures,
                },
            )
        finally:
            if load is not None:
                load.stop()
            stop_all(api, workers)
    assert sync_state, "the standby was not streaming"
    assert {row[1] for row in sync_state} <= {"sync", "quorum"}, sync_state
    assert in_recovery is False
    assert roles_before == ["primary", "standby"]  # as writes_status shows them
    assert roles_after == ["unreachable", "primary"]
    assert applying_again_at - killed_at < 10, applying_again_at - killed_at
    assert_clean(verdict, answers=REFUSALS)
