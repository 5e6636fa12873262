"""``repair``: recompute each projection's recent window from the log, fix drift, record the run."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from readmodels.projections import PROJECTIONS, repair_support
from readmodels.repair import default_since, repair_projection

_DURATION = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(raw: str, *, now: datetime) -> datetime:
    """``48h``, ``7d``, ``90m`` back from now, or an ISO 8601 date or date-time (UTC if no offset)."""
    match = _DURATION.match(raw.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise CommandError(f"--since {raw!r}: use e.g. 48h, 7d, 90m, or 2026-01-31T00:00:00Z") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


class Command(BaseCommand):
    help = "Recompute read models for a recent window from the log, fix every difference, record the run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--shard", action="append", choices=settings.SHARD_ALIASES, help="Default: every shard.")
        parser.add_argument(
            "--since",
            help=f"Window start: 48h, 7d, 90m or ISO 8601 (default: {settings.READMODELS_REPAIR_WINDOW_HOURS}h).",
        )
        parser.add_argument("--projection", action="append", help="Default: every projection.")
        parser.add_argument("--json", action="store_true", help="One JSON object per line instead of a table.")

    def handle(self, *args: Any, **options: Any) -> None:
        since = parse_since(options["since"], now=timezone.now()) if options["since"] else default_since()
        names = options["projection"]
        known = {p.name for p in PROJECTIONS}
        for name in names or []:
            if name not in known:
                raise CommandError(f"No projection named {name!r} (known: {', '.join(sorted(known))}).")
        projections = [p for p in PROJECTIONS if not names or p.name in names]
        if not options["json"]:
            self.stdout.write(f"Repairing since {since.isoformat()}")
            self.stdout.write(f"{'shard':<10} {'projection':<22} {'outcome':<8} {'checked':>9} {'drift':>7} "
                              f"{'fixed':>7} {'seconds':>8}  note")  # fmt: skip
        for shard in options["shard"] or settings.SHARD_ALIASES:
            for projection in projections:
                if repair_support(projection) is None:
                    self.stderr.write(f"{shard} {projection.name}: skipped, it does not support repair")
                    continue
                result = repair_projection(shard=shard, projection=projection, since=since)
                if options["json"]:
                    row = {
                        "shard": result.shard,
                        "projection": result.projection,
                        "outcome": result.outcome,
                        "since": result.since.isoformat() if result.since else None,
                        "checkpoint": result.checkpoint,
                        "rows_checked": result.rows_checked,
                        "drift_found": result.drift_found,
                        "drift_fixed": result.drift_fixed,
                        "duration_seconds": result.duration_seconds,
                        "message": result.message,
                    }
                    self.stdout.write(json.dumps(row))
                else:
                    self.stdout.write(
                        f"{shard:<10} {result.projection:<22} {result.outcome:<8} {result.rows_checked:>9} "
                        f"{result.drift_found:>7} {result.drift_fixed:>7} {result.duration_seconds:>8.3f}  "
                        f"{result.message}"
                    )
