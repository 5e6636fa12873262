"""``bench_projector``: how many log rows per second the projector folds, next to the applier's rate,
measured on a scratch shard database (created, migrated, and dropped again)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from readmodels.projections import LogRow, Projection
from readmodels.projections.events import EventCounts
from readmodels.projector import SLICE_POSITIONS, freshness, project_shard, project_slice
from writes.apply import apply_batch

SCRATCH_ALIAS = "projector_bench"


class RowByRowEventCounts:
    """The event counts without the server-side fast path: rows are fetched and aggregated in Python."""

    name = "event_counts_rows"
    kinds = frozenset({"event"})

    def apply(self, cursor: Any, rows: Sequence[LogRow]) -> None:
        EventCounts().apply(cursor, rows)


def _register_scratch_shard(base_alias: str) -> str:
    config = dict(connections[base_alias].settings_dict)
    config["NAME"] = f"{config['NAME']}_projector_bench"
    with connections[base_alias].cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{config["NAME"]}"')
        cursor.execute(f'CREATE DATABASE "{config["NAME"]}"')
    connections.settings[SCRATCH_ALIAS] = config
    settings.DATABASES[SCRATCH_ALIAS] = config
    settings.SHARD_ALIASES.append(SCRATCH_ALIAS)  # lets the router migrate shard tables into it
    return str(config["NAME"])


def _groups(rows: int, batch: int, tenants: int, names: int, spread: int, seed: int) -> list[list[Any]]:
    """Batches shaped like the publisher's messages: one group per (tenant, batch)."""
    rng = random.Random(seed)
    tenant_ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(tenants)]
    now = datetime.now(UTC)
    received = now.isoformat()
    messages = []
    for start in range(0, rows, batch):
        items = []
        for _ in range(min(batch, rows - start)):
            occurred = (now - timedelta(seconds=rng.randrange(spread))).isoformat()
            payload = json.dumps({"distinct_id": f"u-{rng.randrange(1000)}", "properties": {"plan": "pro"}})
            items.append([str(uuid.uuid4()), f"event_{rng.randrange(names)}", payload, occurred])
        messages.append([[rng.choice(tenant_ids), "event", received, items]])
    return messages


class Command(BaseCommand):
    help = "Measure the projector's rows/s (and the applier's, on the same rows) on a scratch shard."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=500_000)
        parser.add_argument("--batch", type=int, default=1_000, help="Writes per applied batch (one message).")
        parser.add_argument("--tenants", type=int, default=10)
        parser.add_argument("--names", type=int, default=20)
        parser.add_argument(
            "--spread-hours", type=float, default=1.0,
            help="Events occurred up to this long before now (1: live traffic; 168: a week's backfill).",
        )  # fmt: skip
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        base = settings.SHARD_ALIASES[0]
        database = _register_scratch_shard(base)
        try:
            result = self._run(options)
        finally:
            connections[SCRATCH_ALIAS].close()
            with connections[base].cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{database}"')
        result["scratch_database"] = database
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        self.stdout.write(
            f"applier   {result['applier_rows_per_second']:>10,.0f} rows/s  "
            f"({result['rows']:,} rows in batches of {result['batch']:,}, one process)\n"
            f"projector {result['projector_rows_per_second']:>10,.0f} rows/s  (server-side aggregate per slice)\n"
            f"projector {result['row_path_rows_per_second']:>10,.0f} rows/s  (rows fetched and aggregated in Python)\n"
            f"together: applier {result['live_applier_rows_per_second']:,.0f} rows/s while the projector follows; "
            f"at most {result['live_max_positions_behind']:,} positions behind, caught up "
            f"{result['live_caught_up_seconds_after_last_batch']:.3f}s after the last batch"
        )

    def _run(self, options: dict[str, Any]) -> dict[str, Any]:
        call_command("migrate", database=SCRATCH_ALIAS, verbosity=0)
        spread = max(1, int(options["spread_hours"] * 3600))
        groups = _groups(
            options["rows"], options["batch"], options["tenants"], options["names"], spread, options["seed"]
        )
        started = time.perf_counter()
        for message in groups:
            apply_batch(shard=SCRATCH_ALIAS, groups=message)
        applied_in = time.perf_counter() - started
        rows = options["rows"]
        timings: dict[str, float] = {}
        for projection in (EventCounts(), RowByRowEventCounts()):
            with connections[SCRATCH_ALIAS].cursor() as cursor:
                cursor.execute("TRUNCATE event_counts_hourly, event_counts_daily")
                cursor.execute("VACUUM ANALYZE write_log")
            started = time.perf_counter()
            project_shard(SCRATCH_ALIAS, projections=[projection], time_budget=3600.0)
            timings[projection.name] = time.perf_counter() - started
            with connections[SCRATCH_ALIAS].cursor() as cursor:
                cursor.execute("SELECT coalesce(sum(count), 0) FROM event_counts_daily")
                counted = int(cursor.fetchone()[0])
            if counted != rows:
                raise AssertionError(f"{projection.name} counted {counted} events, the log holds {rows}")
        live = self._live(options, spread)
        fast: Projection = EventCounts()
        return {
            "rows": rows,
            "batch": options["batch"],
            "spread_hours": options["spread_hours"],
            "slice_positions": SLICE_POSITIONS,
            "applier_rows_per_second": round(rows / applied_in),
            "projector_rows_per_second": round(rows / timings[fast.name]),
            "row_path_rows_per_second": round(rows / timings["event_counts_rows"]),
            **live,
        }

    def _live(self, options: dict[str, Any], spread: int) -> dict[str, Any]:
        """The applier and the projector at the same time (as in production), on as many new rows:
        how far behind the projector falls, and how soon after the last batch it has caught up."""
        groups = _groups(
            options["rows"], options["batch"], options["tenants"], options["names"], spread, options["seed"] + 1
        )
        applying = threading.Event()
        applying.set()
        max_behind = 0
        caught_up_at = 0.0

        projection = EventCounts()

        def follow() -> None:
            nonlocal max_behind, caught_up_at
            try:
                while True:
                    with connections[SCRATCH_ALIAS].cursor() as cursor:
                        behind = freshness(cursor, EventCounts.name).behind
                    max_behind = max(max_behind, behind)
                    if not applying.is_set() and behind == 0:
                        caught_up_at = time.perf_counter()
                        return
                    # Slice by slice (as project_shard does), sampling how far behind before each one.
                    if not project_slice(SCRATCH_ALIAS, projection, wait=True):
                        time.sleep(0.005)
            finally:
                connections.close_all()

        projector = threading.Thread(target=follow)
        projector.start()
        started = time.perf_counter()
        for message in groups:
            apply_batch(shard=SCRATCH_ALIAS, groups=message)
        applied_at = time.perf_counter()
        applying.clear()
        projector.join()
        return {
            "live_applier_rows_per_second": round(options["rows"] / (applied_at - started)),
            "live_max_positions_behind": max_behind,
            "live_caught_up_seconds_after_last_batch": round(max(0.0, caught_up_at - applied_at), 3),
        }
