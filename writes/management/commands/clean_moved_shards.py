"""``clean_moved_shards [--yes]``: erase the copies that logical-shard moves left on the shards they left.

``move_logical_shard`` copies a logical shard and leaves the old rows where they were (unread). This
deletes them there, tenant by tenant, recording each as a ``TenantErasure``; the new shard is not touched.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from writes.erasure import ErasureError, moved_copies_erase


class Command(BaseCommand):
    help = "Delete, on each shard, the rows of the logical shards it has moved away. Without --yes, only show them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--yes", action="store_true", help="Delete for real.")

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run = not options["yes"]
        try:
            copies = moved_copies_erase(dry_run=dry_run, report=self.stdout.write)
        except ErasureError as exc:
            raise CommandError(f"{exc} Run the command again to finish.") from exc
        tenants = sum(len(copy.tenants) for copy in copies)
        if dry_run:
            self.stdout.write(f"{len(copies)} moved logical shard(s), {tenants} tenant(s) with rows left behind.")
            if tenants:
                raise CommandError("Nothing was deleted: add --yes to delete these copies.")
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Cleaned {len(copies)} moved logical shard(s): {tenants} tenant(s) had rows left behind."
            )
        )
