"""``rebuild_projection NAME``: replay one projection from position 0 into shadow tables and swap them
in, shard by shard, with a progress bar; reads keep being served throughout."""

from __future__ import annotations

import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from readmodels.projections import projection_named
from readmodels.rebuild import RebuildError, rebuild_projection

BAR_WIDTH = 30


class Command(BaseCommand):
    help = "Rebuild one projection from position 0 (blue/green: reads keep being served)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The projection, e.g. event_counts.")
        parser.add_argument("--shard", action="append", choices=settings.SHARD_ALIASES, help="Default: every shard.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            projection = projection_named(options["name"])
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        interactive = sys.stderr.isatty()
        for shard in options["shard"] or settings.SHARD_ALIASES:
            started = time.monotonic()

            def progress(position: int, head: int, shard: str = shard, started: float = started) -> None:
                done = position / head if head else 1.0
                filled = int(BAR_WIDTH * done)
                rate = position / max(time.monotonic() - started, 1e-9)
                line = (f"{shard} {projection.name} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                        f"{done:6.1%} {position}/{head} positions, {rate:,.0f}/s")  # fmt: skip
                self.stderr.write(("\r" + line) if interactive else line, ending="" if interactive else "\n")

            try:
                result = rebuild_projection(shard=shard, projection=projection, progress=progress)
            except RebuildError as exc:
                raise CommandError(str(exc)) from exc
            if interactive:
                self.stderr.write("")
            self.stdout.write(
                f"{shard}: {projection.name} rebuilt up to position {result.position} "
                f"in {result.duration_seconds:.1f}s and swapped in."
            )
