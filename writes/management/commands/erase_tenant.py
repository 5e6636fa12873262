"""``erase_tenant TENANT_ID [--yes]``: erase everything of one tenant (GDPR); without ``--yes``, only show it.

Safe to run again: after an interruption it finishes the job (see ``writes.erasure``).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from writes.dead_letters import ReplayError
from writes.erasure import EXTRA_STEPS, ErasureError, describe_counts, tenant_erase, tenant_erasure_preview


class Command(BaseCommand):
    help = (
        "Erase a tenant: its API keys, its rows on every shard (log, rejected writes, accounts, read models), "
        "its dead-lettered writes, then the tenant. Without --yes, shows what would be erased."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant_id", help="The tenant's id (a UUID, as the admin shows it).")
        parser.add_argument("--yes", action="store_true", help="Erase for real; it cannot be undone.")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant_id = options["tenant_id"]
        try:
            if not options["yes"]:
                counts = tenant_erasure_preview(tenant_id=tenant_id)
                self.stdout.write(f"Would erase tenant {tenant_id}:")
                for line in describe_counts(counts):
                    self.stdout.write(f"  {line}")
                if EXTRA_STEPS:
                    self.stdout.write(f"  and what {len(EXTRA_STEPS)} more step(s) find (archives, …)")
                raise CommandError("Nothing was erased: add --yes to erase this tenant (it cannot be undone).")
            record = tenant_erase(tenant_id=tenant_id, report=self.stdout.write)
        except (ErasureError, ReplayError) as exc:
            raise CommandError(f"{exc} Run the command again to finish the erasure.") from exc
        self.stdout.write(
            self.style.SUCCESS(f"Erased tenant {tenant_id} (erasure #{record.pk}, completed {record.completed_at}).")
        )
