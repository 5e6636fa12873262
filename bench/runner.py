"""Runs the benchmark scenarios one after another and writes the results (JSON, plot, Markdown table).

Each scenario gets a fresh stack (the API as ``serve_api`` runs it, Celery workers, production settings) on
the bench's own databases and queues, load from ``bench.loadgen`` in its own process, and a sampler that counts the
rows committed on the shards. After the load it waits for the queues to drain, then checks the counts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from bench.copy_limit import run_copy_limit
from bench.loadgen import LoadSpec
from bench.stack import (
    BenchEnvironment,
    ProcessSpec,
    Stack,
    _group_members,
    api_process,
    gunicorn_command,
    worker_command,
)
from bench.tenants import CHAT_CONVERSATIONS, CHAT_MEMBERS, LEDGER_ACCOUNTS, LEDGER_GUARDED

PRODUCT_SETTINGS = "config.production"
BENCH_SETTINGS = "bench.settings"
SCENARIOS = [
    "naive", "naive_celery", "single", "client", "single_1k", "batched", "batched_80", "copy_limit",
    "worker_limit", "chat_single_max", "chat_single", "ledger", "ledger_single",
]  # fmt: skip
SAMPLE_SECONDS = 0.1
# After the load (or the drain): long enough for the sampler's last count to see the last commits.
SETTLE_SECONDS = 0.5
BACKLOG_MESSAGES = 40  # worker_limit: messages kept ready per shard queue


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: str = ""
    settings_module: str = PRODUCT_SETTINGS
    table: str = "write_log"  # where its applied rows are counted
    id_column: str = "position"
    batch_size: int = 0
    connections: int = 32
    rate: float = 0.0  # 0: closed loop
    workers: str = "shards"  # "shards", "naive" or "none"
    kind: str = "event"  # what the load posts: "event", "message" (chat) or "transfer" (ledger)
    driver: str = "loadgen"  # "loadgen": raw HTTP requests; "client": producers using writes_client
    log_kind: str = ""  # the write_log kind its requests become, when only those rows are counted
    # Open loop at this share of another scenario's applied rate (that scenario runs earlier in the run).
    rate_of: str = ""
    rate_share: float = 0.8


DEFINITIONS: dict[str, Scenario] = {
    "naive": Scenario(
        "naive", "DRF view + ModelSerializer, objects.create per request (1 event/request), closed loop",
        path="/naive/events", settings_module=BENCH_SETTINGS, table="bench_naive_event", id_column="id",
        workers="none", connections=64,
    ),
    "naive_celery": Scenario(
        "naive_celery", "DRF view + ModelSerializer, one Celery task per event inserting one row, closed loop",
        path="/naive/celery-events", settings_module=BENCH_SETTINGS, table="bench_naive_event", id_column="id",
        workers="naive", connections=64,
    ),
    "single": Scenario(
        "single", "real intake and workers, 1 event/request, closed loop", path="/api/v1/events", connections=64
    ),
    "client": Scenario(
        "client", "32 producers, one event per call through the client library (it batches, gzips, retries)",
        path="/api/v1/events", driver="client",
    ),
    "single_1k": Scenario(
        "single_1k", "real intake and workers, 1 event/request, open loop at 1,000 requests/s",
        path="/api/v1/events", rate=1000.0, connections=64,
    ),
    "batched": Scenario(
        "batched", "real intake and workers, 1,000 events/request, closed loop",
        path="/api/v1/events", batch_size=1000, connections=8,
    ),
    "batched_80": Scenario(
        "batched_80", "real intake and workers, 1,000 events/request, open loop at 80 % of batched's applied rate",
        path="/api/v1/events", batch_size=1000, connections=16, rate_of="batched",
    ),
    "chat_single_max": Scenario(
        "chat_single_max", "chat: 1 message/request to conversations of 50 members, closed loop (capacity)",
        path="/api/v1/conversations/{conversation}/messages", kind="message", log_kind="message",
    ),
    "chat_single": Scenario(
        "chat_single", "chat: 1 message/request to conversations of 50 members, open loop at 80 % of chat_single_max",
        path="/api/v1/conversations/{conversation}/messages", kind="message", log_kind="message", connections=64,
        rate_of="chat_single_max",
    ),
    "ledger": Scenario(
        "ledger", "ledger: 1,000 transfers/request, 10 % touching no_overdraft accounts, closed loop",
        path="/api/v1/ledger/transfers", kind="transfer", log_kind="transfer", batch_size=1000, connections=8,
    ),
    "ledger_single": Scenario(
        "ledger_single", "ledger: 1 transfer/request, 10 % touching no_overdraft accounts, closed loop",
        path="/api/v1/ledger/transfers", kind="transfer", log_kind="transfer",
    ),
    "worker_limit": Scenario(
        "worker_limit", "the workers alone: 1,000-event apply_batch messages published straight to the shard "
        "queues (no API), a backlog of about 40 messages kept per queue", batch_size=1000,
    ),
    "copy_limit": Scenario(
        "copy_limit", "raw psycopg 3 COPY of the same rows into a scratch table, one connection per shard",
        table="bench_copy_scratch", workers="none",
    ),
}  # fmt: skip


@dataclass
class Tuning:
    """Process layout of the measured stack (the production defaults unless overridden)."""

    api_workers: int = 2
    api_threads: int = 16
    worker_concurrency: int = 1
    worker_prefetch: int = 16
    # The pool ``make run`` and docker-compose start workers with (settings.WORKER_POOL's default):
    # shard queues are applied by the batching consumer's thread in the worker process itself, so the
    # pool only runs maintenance tasks; prefork would add a child process per worker for nothing.
    worker_pool: str = "solo"
    workers_per_shard: int = 1
    naive_worker_concurrency: int = 2


@dataclass
class ScenarioResult:
    name: str
    description: str
    duration_s: float
    offered_requests_per_s: float | None = None
    accepted_writes_per_s: float = 0.0
    applied_writes_per_s: float = 0.0  # rows committed during the load window / its length
    http_latency_ms: dict[str, float] = field(default_factory=dict)
    lag_applied_s: dict[str, float] | None = None
    lag_visible_s: dict[str, float] | str | None = None
    # CPU seconds of each role's processes (worker: the shard appliers) during the run, per applied
    # write, in milliseconds.
    cpu_ms_per_write: dict[str, float] = field(default_factory=dict)
    rows_rejected: int = 0  # recorded in rejected_writes (ledger: insufficient funds); not lost
    ledger_violations: int | None = None  # broken ledger invariants among this scenario's tenants
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    writes_accepted: int = 0
    rows_applied: int = 0
    not_applied_after_drain: int = 0
    messages_left_in_queue: int = 0  # purged after the scenario; non-zero means the drain timed out
    duplicates: int = 0
    drain_s: float = 0.0
    loadgen: dict[str, float] = field(default_factory=dict)
    applied_timeline: list[float] = field(default_factory=list)
    accepted_timeline: list[int] = field(default_factory=list)
    load_average: list[float] = field(default_factory=list)
    failure: str | None = None


class Sampler(threading.Thread):
    """Counts rows committed in ``table`` on every shard, every ``SAMPLE_SECONDS``, by reading the DB."""

    def __init__(self, environment: BenchEnvironment, table: str, id_column: str) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.environment = environment
        self.table = table
        self.id_column = id_column
        self.samples: list[tuple[float, int]] = []  # (unix time, rows committed so far on all shards)
        # (unix time, shard, lowest checkpoint position) when a readmodels projector exists
        self.checkpoints: list[tuple[float, str, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        connections = {alias: self.environment.connect(alias) for alias in self.environment.shard_aliases}
        last_id = dict.fromkeys(connections, 0)
        counted = 0
        has_checkpoints = {alias: _has_table(conn, "projection_checkpoints") for alias, conn in connections.items()}
        # Count from what is there now: earlier scenarios' rows are not this one's.
        for alias, connection in connections.items():
            row = connection.execute(f"SELECT coalesce(max({self.id_column}), 0) FROM {self.table}").fetchone()  # noqa: S608
            last_id[alias] = int(row[0]) if row else 0
        # Incremental counts by id stay cheap however large the table grows; the log's ids are
        # gap-safe (the append lock), so nothing committed later can appear below a counted id.
        query = f"SELECT count(*), max({self.id_column}) FROM {self.table} WHERE {self.id_column} > %s"  # noqa: S608
        try:
            while not self._halt.is_set():
                now = time.time()
                for alias, connection in connections.items():
                    row = connection.execute(query, [last_id[alias]]).fetchone()
                    assert row is not None
                    count, highest = int(row[0]), row[1]
                    counted += count
                    if highest is not None:
                        last_id[alias] = int(highest)
                    if has_checkpoints[alias]:
                        checkpoint = connection.execute("SELECT min(position) FROM projection_checkpoints").fetchone()
                        if checkpoint and checkpoint[0] is not None:
                            self.checkpoints.append((now, alias, int(checkpoint[0])))
                self.samples.append((now, counted))
                self._halt.wait(SAMPLE_SECONDS)
        finally:
            for connection in connections.values():
                connection.close()

    def stop(self) -> None:
        self._halt.set()
        if self.ident is not None:
            self.join(timeout=10)

    def count_at(self, moment: float) -> float:
        """Rows committed at ``moment``, interpolated between samples."""
        before = [(t, c) for t, c in self.samples if t <= moment]
        after = [(t, c) for t, c in self.samples if t >= moment]
        if not before:
            return float(self.samples[0][1]) if self.samples else 0.0
        if not after:
            return float(before[-1][1])
        (t0, c0), (t1, c1) = before[-1], after[0]
        return float(c0) if t1 == t0 else c0 + (c1 - c0) * (moment - t0) / (t1 - t0)

    def latest(self) -> int:
        return self.samples[-1][1] if self.samples else 0


def _has_table(connection: Any, table: str) -> bool:
    row = connection.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
    return bool(row and row[0])


class BenchRun:
    def __init__(
        self,
        environment: BenchEnvironment,
        *,
        duration: float,
        scenarios: list[str],
        tuning: Tuning,
        drain_timeout: float = 120.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.environment = environment
        self.duration = duration
        self.scenarios = scenarios
        self.tuning = tuning
        self.drain_timeout = drain_timeout
        self.say = say
        self.tenants: dict[str, list[dict[str, str]]] = {}
        self.results: list[ScenarioResult] = []
        self._checkpoint_refused = False

    # --- preparation ------------------------------------------------------------------------

    def prepare(self) -> None:
        self.say(f"preparing databases {self.environment.db_prefix}_* and queues {self.environment.queue_prefix}.*")
        self.environment.manage("prepare_databases")
        self.environment.manage("migrate", "--verbosity", "0")
        self.environment.manage("prepare_queues")  # the queues' policy: their bounds and delivery limit
        for alias in self.environment.shard_aliases:
            with self.environment.connect(alias) as connection:
                # A clean slate: counts, lags and positions below belong to this run alone.
                connection.execute("TRUNCATE write_log, rejected_writes, bench_naive_event RESTART IDENTITY")
                connection.execute("DROP TABLE IF EXISTS bench_copy_scratch")
                if _has_table(connection, "projection_checkpoints"):
                    connection.execute("TRUNCATE projection_checkpoints")
        self.environment.purge_queues([*self._queues(), self.environment.queue("maintenance")])
        tag = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        names = [f"{name}-{tag}" for name in self.scenarios if name != "copy_limit"]
        output = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "bench.tenants", *names],
            cwd=self.environment.log_dir.parent.parent,
            env=self.environment.variables(BENCH_SETTINGS),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for entry in json.loads(output):
            self.tenants.setdefault(entry["scenario"].rsplit("-", 1)[0], []).append(entry)

    def _queues(self) -> list[str]:
        return [self.environment.queue(alias) for alias in self.environment.shard_aliases] + [
            self.environment.queue("naive")
        ]

    # --- scenarios --------------------------------------------------------------------------

    def run(self) -> list[ScenarioResult]:
        for name in self.scenarios:
            scenario = DEFINITIONS[name]
            self.say(f"scenario {name}: {scenario.description} ({self.duration:g} s)")
            self._quiesce()
            try:
                if name == "copy_limit":
                    result = self._run_copy_limit(scenario)
                elif name == "worker_limit":
                    result = self._run_worker_limit(scenario)
                else:
                    result = self._run_http(scenario)
            except Exception as exc:
                result = ScenarioResult(name=name, description=scenario.description, duration_s=self.duration)
                result.failure = f"{exc.__class__.__name__}: {exc}"[:2000]
                self.say(f"  failed: {result.failure}")
            self.results.append(result)
            self.say("  " + summary_line(result))
        return self.results

    def _quiesce(self) -> None:
        """Start every scenario from a settled database, as a server with autovacuum would have it:
        fresh statistics for the tables the previous scenarios filled (the planner's choices depend on
        them, and autovacuum may be off or not have run yet), and a CHECKPOINT, so what the previous
        scenario dirtied is not written back, and logged again as full pages, in the middle of this one."""
        for alias in ("default", *self.environment.shard_aliases):
            with self.environment.connect(alias) as connection:
                connection.execute("ANALYZE")
                try:
                    connection.execute("CHECKPOINT")
                except psycopg.errors.InsufficientPrivilege:
                    if not self._checkpoint_refused:
                        self.say("  no CHECKPOINT between scenarios: it needs a superuser or the pg_checkpoint role")
                    self._checkpoint_refused = True

    def _stack_for(self, scenario: Scenario, *, api: bool = True) -> Stack:
        tuning = self.tuning
        if not api:
            specs = []
        elif scenario.settings_module == BENCH_SETTINGS:  # the naive baselines: plain Django under gunicorn
            specs = [ProcessSpec("api", gunicorn_command(workers=tuning.api_workers, threads=tuning.api_threads))]
        else:
            specs = [api_process(port=self.environment.port, processes=tuning.api_workers)]
        if scenario.workers == "shards":
            for alias, copy in itertools.product(self.environment.shard_aliases, range(tuning.workers_per_shard)):
                command = worker_command(
                    [self.environment.queue(alias)],
                    name=f"bench-{alias}-{copy}",
                    concurrency=tuning.worker_concurrency,
                    prefetch=tuning.worker_prefetch,
                    pool=tuning.worker_pool,
                )
                specs.append(ProcessSpec("worker", command, queue=self.environment.queue(alias)))
            # Housekeeping (the read-model projector) runs as README's worker layout recommends: a worker
            # of its own with a thread per shard, so one shard's projector run never waits for another's.
            maintenance = self.environment.queue("maintenance")
            shards = len(self.environment.shard_aliases)
            command = worker_command(
                [maintenance], name="bench-maintenance", concurrency=shards, prefetch=4, pool="threads"
            )
            specs.append(ProcessSpec("housekeeping", command, queue=maintenance))
        elif scenario.workers == "naive":
            command = worker_command(
                [self.environment.queue("naive")],
                name="bench-naive",
                concurrency=tuning.naive_worker_concurrency,
                prefetch=4,
                pool="prefork",
            )
            specs.append(ProcessSpec("worker", command, queue=self.environment.queue("naive")))
        return Stack(self.environment, scenario.settings_module, specs)

    def _offered_rate(self, scenario: Scenario) -> float:
        if not scenario.rate_of:
            return scenario.rate
        measured = next((r for r in self.results if r.name == scenario.rate_of and not r.failure), None)
        if measured is None or measured.applied_writes_per_s <= 0:
            needed = f"a successful {scenario.rate_of} scenario earlier in the same run"
            raise RuntimeError(f"{scenario.name} needs {needed}")
        return scenario.rate_share * measured.applied_writes_per_s / max(1, scenario.batch_size)

    def _run_http(self, scenario: Scenario) -> ScenarioResult:
        tenants = self.tenants[scenario.name]
        rate = self._offered_rate(scenario)
        spec = LoadSpec(
            host="127.0.0.1",
            port=self.environment.port,
            path=scenario.path,
            api_keys=[t["api_key"] for t in tenants],
            duration=self.duration,
            batch_size=scenario.batch_size,
            connections=scenario.connections,
            rate=rate,
            kind=scenario.kind,
            conversations=CHAT_CONVERSATIONS,
            members=CHAT_MEMBERS,
            accounts=LEDGER_ACCOUNTS,
            guarded=LEDGER_GUARDED,
        )
        ids = [t["tenant_id"] for t in tenants]
        stack = self._stack_for(scenario)
        sampler = Sampler(self.environment, scenario.table, scenario.id_column)
        result = ScenarioResult(name=scenario.name, description=scenario.description, duration_s=self.duration)
        result.offered_requests_per_s = round(rate, 1) if rate else None
        try:
            stack.start()
            sampler.start()
            cpu_before = role_cpu_seconds(stack)
            load = _run_client_load(spec) if scenario.driver == "client" else _run_loadgen(spec)
            load_start = load["started_at"]
            load_end = load_start + load["wall_seconds"]
            accepted = int(load["writes_accepted"])
            drain_start = time.monotonic()
            while time.monotonic() - drain_start < self.drain_timeout:
                if scenario.workers == "none":
                    break  # synchronous: nothing left in flight once the load stops
                if scenario.log_kind:  # some writes may be rejected (not in the log): count both
                    if sum(self._count_rows(scenario, ids)[::2]) >= accepted:
                        break
                elif sampler.latest() >= accepted:
                    break
                time.sleep(SAMPLE_SECONDS)
            result.drain_s = round(time.monotonic() - drain_start, 2)
            time.sleep(SETTLE_SECONDS)
            cpu_after = role_cpu_seconds(stack)
            result.peak_rss_mb = stack.peak_rss_mb()
            if scenario.kind == "transfer":
                result.ledger_violations = self._ledger_violations(ids)
        finally:
            stack.stop()
            sampler.stop()
            # Messages still queued once the workers are gone: writes not applied yet, but not lost.
            result.messages_left_in_queue = self.environment.queue_depth(self._queues())
            self.environment.purge_queues([*self._queues(), self.environment.queue("maintenance")])
        result.load_average = [round(v, 2) for v in os.getloadavg()]
        result.requests = int(load["requests"])
        result.errors = load["errors"]
        result.writes_accepted = accepted
        result.accepted_writes_per_s = round(accepted / load["wall_seconds"], 1)
        result.http_latency_ms = load["latency_ms"]
        result.accepted_timeline = load["accepted_timeline"]
        result.loadgen = {
            "cpu_seconds": load["cpu_seconds"],
            "cpu_percent_of_one_core": load["cpu_percent_of_one_core"],
            "connections": scenario.connections,
        }
        self._settle(
            result,
            scenario,
            ids,
            sampler,
            (load_start, load_end, load["wall_seconds"]),
            accepted,
            cpu_before,
            cpu_after,
        )
        if scenario.workers != "none":
            result.lag_applied_s = self._lag(scenario, ids)
        if scenario.table == "write_log":
            result.lag_visible_s = self._visible_lag(sampler, ids)
        return result

    def _settle(
        self,
        result: ScenarioResult,
        scenario: Scenario,
        ids: list[str],
        sampler: Sampler,
        window: tuple[float, float, float],
        accepted: int,
        cpu_before: dict[str, float],
        cpu_after: dict[str, float],
    ) -> None:
        """What the databases and the processes say once a load is over: the applied rate over the load
        window (start, end, wall seconds), the row counts and the CPU per settled write."""
        start, end, wall_seconds = window
        result.applied_writes_per_s = round((sampler.count_at(end) - sampler.count_at(start)) / wall_seconds, 1)
        result.applied_timeline = _timeline(sampler, start, int(self.duration + 0.999))
        result.rows_applied, result.duplicates, result.rows_rejected = self._count_rows(scenario, ids)
        result.not_applied_after_drain = max(0, accepted - result.rows_applied - result.rows_rejected)
        settled = result.rows_applied + result.rows_rejected
        result.cpu_ms_per_write = {
            role: round(1000 * (cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0)) / settled, 4)
            for role in cpu_after
            if settled
        }

    def _run_worker_limit(self, scenario: Scenario) -> ScenarioResult:
        """What the workers apply when the API is not the bottleneck: the same messages the API would
        publish, kept queued, so the workers never wait for writes."""
        tenants = self.tenants[scenario.name]
        stack = self._stack_for(scenario, api=False)
        sampler = Sampler(self.environment, scenario.table, scenario.id_column)
        result = ScenarioResult(name=scenario.name, description=scenario.description, duration_s=self.duration)
        ids = [t["tenant_id"] for t in tenants]
        try:
            stack.start()
            sampler.start()
            cpu_before = role_cpu_seconds(stack)
            published = publish_backlog(
                self.environment, tenants, duration=self.duration, writes=scenario.batch_size, applied=sampler.latest
            )
            start, end = published["started_at"], published["started_at"] + published["wall_seconds"]
            accepted = int(published["writes"])
            drain_start = time.monotonic()
            while sampler.latest() < accepted and time.monotonic() - drain_start < self.drain_timeout:
                time.sleep(SAMPLE_SECONDS)
            result.drain_s = round(time.monotonic() - drain_start, 2)
            time.sleep(SETTLE_SECONDS)
            cpu_after = role_cpu_seconds(stack)
            result.peak_rss_mb = stack.peak_rss_mb()
        finally:
            stack.stop()
            sampler.stop()
            result.messages_left_in_queue = self.environment.queue_depth(self._queues())
            self.environment.purge_queues([*self._queues(), self.environment.queue("maintenance")])
        result.load_average = [round(v, 2) for v in os.getloadavg()]
        result.writes_accepted = accepted
        result.accepted_writes_per_s = round(accepted / published["wall_seconds"], 1)
        self._settle(
            result, scenario, ids, sampler, (start, end, published["wall_seconds"]), accepted, cpu_before, cpu_after
        )
        # No lag: the messages are published ahead of the workers on purpose (a kept backlog).
        result.loadgen = {"cpu_seconds": published["cpu_seconds"], "messages": published["messages"]}
        return result

    def _run_copy_limit(self, scenario: Scenario) -> ScenarioResult:
        result = ScenarioResult(name=scenario.name, description=scenario.description, duration_s=self.duration)
        for alias in self.environment.shard_aliases:
            with self.environment.connect(alias) as connection:
                connection.execute(
                    "CREATE TABLE bench_copy_scratch (LIKE write_log INCLUDING DEFAULTS INCLUDING IDENTITY "
                    "INCLUDING INDEXES INCLUDING CONSTRAINTS) PARTITION BY RANGE (id_day)"
                )
                connection.execute(
                    "CREATE TABLE bench_copy_scratch_today PARTITION OF bench_copy_scratch "
                    "FOR VALUES FROM (current_date) TO (current_date + 1)"
                )
        sampler = Sampler(self.environment, scenario.table, scenario.id_column)
        sampler.start()
        try:
            copied = run_copy_limit(self.environment, duration=self.duration)
            time.sleep(SETTLE_SECONDS)
        finally:
            sampler.stop()
        start, end = copied["started_at"], copied["started_at"] + copied["wall_seconds"]
        window = sampler.count_at(end) - sampler.count_at(start)
        result.applied_writes_per_s = round(window / copied["wall_seconds"], 1)
        result.accepted_writes_per_s = result.applied_writes_per_s
        result.writes_accepted = int(copied["rows"])
        result.rows_applied = sampler.latest()
        result.not_applied_after_drain = max(0, result.writes_accepted - result.rows_applied)
        result.applied_timeline = _timeline(sampler, start, int(self.duration + 0.999))
        result.loadgen = {"cpu_seconds": copied["cpu_seconds"], "connections": len(self.environment.shard_aliases)}
        result.load_average = [round(v, 2) for v in os.getloadavg()]
        for alias in self.environment.shard_aliases:
            with self.environment.connect(alias) as connection:
                connection.execute("DROP TABLE IF EXISTS bench_copy_scratch")
        return result

    # --- checks in the database ---------------------------------------------------------------

    def _count_rows(self, scenario: Scenario, tenant_ids: list[str]) -> tuple[int, int, int]:
        """Rows of these tenants on the shards (of the scenario's kind, if it names one), how many
        (tenant, id) pairs appear more than once, and how many writes were recorded as rejected."""
        total = duplicates = rejected = 0
        kinds = [scenario.log_kind] if scenario.log_kind else None
        for alias in self.environment.shard_aliases:
            with self.environment.connect(alias) as connection:
                if scenario.table == "write_log":
                    row = connection.execute(
                        "SELECT count(*), count(*) - count(DISTINCT (tenant_id, write_id)) FROM write_log "
                        "WHERE tenant_id = ANY(%s::uuid[]) AND (%s::text[] IS NULL OR kind = ANY(%s::text[]))",
                        [tenant_ids, kinds, kinds],
                    ).fetchone()
                    refused = connection.execute(
                        "SELECT count(*) FROM rejected_writes WHERE tenant_id = ANY(%s::uuid[])", [tenant_ids]
                    ).fetchone()
                    rejected += int(refused[0]) if refused else 0
                else:  # the baselines have no ids of their own to repeat
                    row = connection.execute(
                        "SELECT count(*), 0 FROM bench_naive_event WHERE tenant_id = ANY(%s::uuid[])", [tenant_ids]
                    ).fetchone()
                assert row is not None
                total += int(row[0])
                duplicates += int(row[1])
        return total, duplicates, rejected

    def _ledger_violations(self, tenant_ids: list[str], *, timeout: float = 60.0) -> int:
        """Once the projector has read every shard's log: the ledger invariants (every currency sums to
        zero, every guarded balance is the sum of its transfers and not below zero) broken for these
        tenants."""
        from readmodels.projections.ledger import invariant_violations

        wanted = set(tenant_ids)
        broken = 0
        for alias in self.environment.shard_aliases:
            with self.environment.connect(alias) as connection:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    row = connection.execute(
                        "SELECT (SELECT coalesce(max(position), 0) FROM write_log) "
                        "<= (SELECT coalesce(min(position), 0) FROM projection_checkpoints)"
                    ).fetchone()
                    if row and row[0]:
                        break
                    time.sleep(SAMPLE_SECONDS)
                with connection.cursor() as cursor:
                    broken += sum(1 for v in invariant_violations(cursor) if str(v.tenant_id) in wanted)
        return broken

    def _lag(self, scenario: Scenario, tenant_ids: list[str]) -> dict[str, float]:
        """Accepted → applied: ``applied_at - received_at`` of every row, percentiles over all shards."""
        samples: list[float] = []
        for alias in self.environment.shard_aliases:
            with self.environment.connect(alias) as connection:
                kinds = [scenario.log_kind] if scenario.log_kind else None
                # Only the log has kinds; the baselines' table has one row per event and no kind.
                of_kind = " AND (%s::text[] IS NULL OR kind = ANY(%s::text[]))" if scenario.table == "write_log" else ""
                rows = connection.execute(
                    f"SELECT extract(epoch FROM applied_at - received_at)::float8 FROM {scenario.table} "  # noqa: S608
                    f"WHERE tenant_id = ANY(%s::uuid[]){of_kind}",
                    [tenant_ids, kinds, kinds] if of_kind else [tenant_ids],
                ).fetchall()
                samples.extend(float(r[0]) for r in rows)
        return _percentiles(samples)

    def _visible_lag(self, sampler: Sampler, tenant_ids: list[str]) -> dict[str, float] | str:
        """Accepted → visible in the read model: when the projector's checkpoint first passed the row."""
        if not sampler.checkpoints:
            return "not available: no readmodels projector checkpoints on the shards"
        samples: list[float] = []
        for alias in self.environment.shard_aliases:
            seen = [(t, position) for t, shard, position in sampler.checkpoints if shard == alias]
            with self.environment.connect(alias) as connection:
                rows = connection.execute(
                    "SELECT position, extract(epoch FROM received_at)::float8 FROM write_log "
                    "WHERE tenant_id = ANY(%s::uuid[]) AND position %% 50 = 0",
                    [tenant_ids],
                ).fetchall()
            for position, received in rows:
                visible = next((t for t, checkpoint in seen if checkpoint >= position), None)
                if visible is not None:
                    samples.append(max(0.0, visible - float(received)))
        if not samples:
            return "not available: the projector did not pass any of this scenario's rows while sampled"
        return _percentiles(samples)


def publish_backlog(
    environment: BenchEnvironment,
    tenants: list[dict[str, str]],
    *,
    duration: float,
    writes: int,
    applied: Callable[[], int],
) -> dict[str, Any]:
    """Publish ``apply_batch`` messages of ``writes`` events (as the API builds them) to each tenant's shard
    queue for ``duration`` seconds, keeping about ``BACKLOG_MESSAGES`` per queue published and not applied
    yet (``applied``: rows committed so far)."""
    from kombu import Connection, Producer

    from writes.publisher import apply_task_message
    from writes.queues import MSGPACK_CONTENT_TYPE, register_serializer

    register_serializer()
    nonce = uuid.uuid4().hex
    now = datetime.now(UTC).isoformat()
    templates = []
    for tenant in tenants:
        rows = [
            [
                f"RRRRRRRR-{nonce[:4]}-4{nonce[4:7]}-8{n:03x}-{nonce[7:19]}",
                f"page_view_{n % 7}",
                json.dumps({"distinct_id": f"user-{n}", "properties": {"path": f"/p/{n % 1000}", "n": n, "ok": True}}),
                now,
            ]
            for n in range(writes)
        ]
        _, headers, body = apply_task_message(tenant["shard"], [[tenant["tenant_id"], "event", now, rows]])
        encoded = msgspec.msgpack.encode(body)
        templates.append((environment.queue(tenant["shard"]), headers, encoded))
    cpu_before = _own_cpu_seconds()
    started_at = time.time()
    stop_at = time.monotonic() + duration
    messages = 0
    with Connection(environment.broker_url, transport_options={"confirm_publish": True}) as connection:
        producer = Producer(connection.channel())
        while time.monotonic() < stop_at:
            if messages * writes - applied() >= BACKLOG_MESSAGES * len(templates) * writes:
                time.sleep(0.02)
                continue
            for queue, headers, encoded in templates:
                for _ in range(BACKLOG_MESSAGES // 4):
                    messages += 1
                    producer.publish(
                        encoded.replace(b"RRRRRRRR", b"%08x" % messages),
                        exchange=environment.queue_prefix,
                        routing_key=queue,
                        content_type=MSGPACK_CONTENT_TYPE,
                        content_encoding="binary",
                        headers={**headers, "id": str(uuid.uuid4())},
                        delivery_mode=2,
                        retry=False,
                    )
    return {
        "writes": messages * writes,
        "messages": messages,
        "started_at": started_at,
        "wall_seconds": time.time() - started_at,
        "cpu_seconds": round(_own_cpu_seconds() - cpu_before, 3),
    }


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def role_cpu_seconds(stack: Stack) -> dict[str, float]:
    """User + system CPU seconds used so far by the processes of each role (and their pool children)."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for spec, process, _ in stack.processes:
        for pid in _group_members(process.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After the command: state, ppid, pgrp, session, tty, tpgid, flags, minflt, cminflt, majflt,
            # cmajflt, utime, stime.
            totals[spec.role] = totals.get(spec.role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return totals


def _run_loadgen(spec: LoadSpec) -> dict[str, Any]:
    return _run_load_process("bench.loadgen", asdict(spec), timeout=spec.duration + 120)


def _run_client_load(spec: LoadSpec) -> dict[str, Any]:
    """The ``client`` scenario's load: ``bench.client_load`` (producers using the client library)."""
    client_spec = {"url": f"http://{spec.host}:{spec.port}", "api_keys": spec.api_keys, "duration": spec.duration}
    return _run_load_process("bench.client_load", client_spec, timeout=spec.duration + 180)


def _run_load_process(module: str, spec: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """A load generator in a process of its own: its spec as JSON on stdin, its result as JSON on stdout."""
    completed = subprocess.run(  # noqa: S603 (our own modules, by name)
        [sys.executable, "-m", module],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{module} failed:\n{completed.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def _timeline(sampler: Sampler, start: float, seconds: int) -> list[float]:
    return [round(sampler.count_at(start + s + 1) - sampler.count_at(start + s), 1) for s in range(seconds)]


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 3), "rows": len(ordered)}


def summary_line(result: ScenarioResult) -> str:
    if result.failure:
        return f"{result.name}: FAILED {result.failure[:200]}"
    latency = result.http_latency_ms
    return (
        f"{result.name}: accepted {result.accepted_writes_per_s:,.0f}/s, applied {result.applied_writes_per_s:,.0f}/s, "
        f"p50/p99 {latency.get('p50', '-')}/{latency.get('p99', '-')} ms, errors {sum(result.errors.values())}, "
        f"not applied {result.not_applied_after_drain}, rss {result.peak_rss_mb}"
    )


def machine_description() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024**2, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
