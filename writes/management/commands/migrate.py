"""``migrate`` with no ``--database`` brings the control database and every shard up to date."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import CommandParser
from django.core.management.commands import migrate


class Command(migrate.Command):
    help = "Migrate the control database and every shard (or only --database)."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.set_defaults(database=None)

    def execute(self, *args: Any, **options: Any) -> str | None:
        if options.get("database") is not None:
            return super().execute(*args, **options)
        for alias in ["default", *settings.SHARD_ALIASES]:
            if options.get("verbosity", 1) >= 1:
                self.stdout.write(self.style.MIGRATE_HEADING(f"Database {alias}:"))
            super().execute(*args, **{**options, "database": alias})
        return None
