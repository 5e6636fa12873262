"""``maintain_log [--shard ALIAS] [--dry-run]``: what the beat job ``writes.maintain_log`` does, now.

Creates the log's day partitions ahead of need and applies ``WRITES_RETENTION_DAYS``: the expired kinds
of every old day are archived (``WRITES_ARCHIVE_DIR``) and leave the database with their partition.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from writes.lifecycle import maintain_log


class Command(BaseCommand):
    help = "Create the log's partitions ahead and apply retention (archive, then detach and drop old days)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--shard", action="append", dest="shards", help="Only this shard (repeatable).")
        parser.add_argument("--dry-run", action="store_true", help="Show what retention would retire; change nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        shards = options["shards"] or list(settings.SHARD_ALIASES)
        unknown = sorted(set(shards) - set(settings.SHARD_ALIASES))
        if unknown:
            raise CommandError(f"Unknown shard(s): {', '.join(unknown)}. Shards: {', '.join(settings.SHARD_ALIASES)}.")
        retention = settings.WRITES_RETENTION_DAYS
        self.stdout.write(
            "Retention: "
            + (", ".join(f"{kind} {days} days" for kind, days in sorted(retention.items())) or "every kind forever")
            + (f"; archives in {settings.WRITES_ARCHIVE_DIR}" if settings.WRITES_ARCHIVE else "; no archives")
        )
        for shard in shards:
            report = maintain_log(shard, dry_run=options["dry_run"])
            self.stdout.write(report.describe())
