"""``replay_archive PATH [--shard ALIAS] [--tenant UUID] [--rebuild-read-models]``: apply archived log
rows again (a day, a shard's days or the whole archive), then optionally project them.

Checks the archive's checksums and the target first and refuses, applying nothing, when either is
wrong. Safe to repeat: ids are idempotency keys, so a second run applies nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from readmodels.projector import project_shard
from writes.archive import replay_archive
from writes.errors import ArchiveError


class Command(BaseCommand):
    help = "Apply an archive of the log again (checksums verified first); idempotent."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="A day directory, a shard directory or the archive root.")
        parser.add_argument(
            "--shard", choices=settings.SHARD_ALIASES, help="Apply into this shard (default: the one each day names)."
        )
        parser.add_argument("--tenant", help="Only this tenant's rows (its UUID).")
        parser.add_argument(
            "--rebuild-read-models",
            action="store_true",
            help="Then run the projector on the target shard(s) until the read models have caught up.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        try:
            results = replay_archive(path=options["path"], shard=options["shard"], tenant_id=options["tenant"])
        except ArchiveError as exc:
            raise CommandError(str(exc)) from exc
        for result in results:
            for day in result.days:
                kinds = ", ".join(f"{kind} {rows:,}" for kind, rows in sorted(day.rows.items()))
                self.stdout.write(f"{day.shard}/{day.day.isoformat()}: {kinds or 'no rows'}")
            self.stdout.write(
                f"{result.source} → {result.shard}: {len(result.days)} day(s), {result.read:,} row(s) read, "
                f"{result.applied:,} applied, {result.duplicates:,} duplicate(s) (applied before), "
                f"{result.rejected:,} rejected, {result.diverted:,} forwarded to the shard their tenant moved to"
            )
            if result.rejected:
                self.stderr.write(
                    f"{result.rejected} row(s) were rejected on {result.shard}: see rejected_writes there "
                    "(GET /api/v1/writes/{id} shows each reason)."
                )
        self.stdout.write(f"replayed in {time.monotonic() - started:.1f}s")
        if options["rebuild_read_models"]:
            for shard in dict.fromkeys(result.shard for result in results):
                advanced = total = 0
                while advanced := project_shard(shard):
                    total += advanced
                self.stdout.write(f"{shard}: read models caught up ({total:,} position(s) projected)")
