"""``writes_status [--json]``: the operations page on the command line (queues, apply rates, lag per shard),
and each broker node and shard server with its role."""

from __future__ import annotations

import json
import math
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from writes.operations import busiest_logical_shards, collect_overview, overview_as_dict


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "stalled"
    return f"{value:,.{digits}f}"


class Command(BaseCommand):
    help = "Per shard: queue depth, consumers, apply rate, time to drain, last position, projection lag."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the figures as one JSON object.")
        parser.add_argument(
            "--busiest",
            metavar="SHARD",
            help="Instead: the logical shards on SHARD with the most writes in the last hour (what to move first).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["busiest"]:
            self._busiest(options["busiest"])
            return
        view = collect_overview()
        brokers, servers = view.broker_nodes, view.shard_servers
        if options["json"]:
            self.stdout.write(json.dumps(overview_as_dict(view)))
            return
        self.stdout.write(
            f"{'shard':<10} {'depth':>8} {'consumers':>9} {'rows/s':>10} {'msgs/s':>8} "
            f"{'drain s':>9} {'last position':>14}"
        )
        for s in view.shards:
            self.stdout.write(
                f"{s.shard:<10} {_number(s.queue_depth):>8} {_number(s.consumers):>9} "
                f"{_number(s.rows_per_second, 1):>10} {_number(s.batches_per_second, 2):>8} "
                f"{_number(s.seconds_to_drain, 1):>9} {_number(s.last_position):>14}"
                + (f"  ! {'; '.join(s.problems)}" if s.problems else "")
            )
            for p in s.projections:
                self.stdout.write(
                    f"{'':<10} projection {p.projection}: "
                    + (f"checkpoint {p.checkpoint}, " if p.checkpoint is not None else "")
                    + f"lag {p.lag_positions} positions"
                    + (f", {p.lag_seconds:.1f} s" if p.lag_seconds is not None else "")
                    + (f"; last repair drift {p.last_repair_drift}" if p.last_repair_drift is not None else "")
                )
        self.stdout.write(f"dead-letter queue: {_number(view.dead_letters)} message(s)")
        self.stdout.write("broker nodes: " + ", ".join(f"{r.server} {r.role}" for r in brokers))
        for alias, roles in servers.items():
            self.stdout.write(f"{alias} servers: " + ", ".join(f"{r.server} {r.role}" for r in roles))

    def _busiest(self, shard: str) -> None:
        if shard not in settings.SHARD_ALIASES:
            raise CommandError(f"{shard} is not a configured shard ({', '.join(settings.SHARD_ALIASES)}).")
        self.stdout.write(f"{'logical shard':>13} {'writes (last hour)':>19}")
        for logical, writes in busiest_logical_shards(shard):
            self.stdout.write(f"{logical:>13} {writes:>19,}")
