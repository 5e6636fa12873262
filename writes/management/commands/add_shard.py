"""``add_shard URL``: prepare a new physical shard: create and migrate its database, declare its queue.

Shards are configured by ``SHARD_DATABASE_URLS`` (their order gives the aliases), so the command ends
by saying which entry to append before restarting the processes and moving logical shards onto it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from kombu import Connection

from config.settings import database
from writes.broker import redacted
from writes.management.commands.prepare_databases import ensure_database
from writes.queues import queue_name, shard_queue


def register_shard_alias(alias: str, config: dict[str, Any]) -> None:
    """Make ``alias`` usable in this process, as if it had been in SHARD_DATABASE_URLS at start."""
    filled = connections.configure_settings({DEFAULT_DB_ALIAS: settings.DATABASES[DEFAULT_DB_ALIAS], alias: config})
    settings.DATABASES[alias] = filled[alias]
    connections.settings[alias] = filled[alias]
    if alias not in settings.SHARD_ALIASES:
        settings.SHARD_ALIASES.append(alias)


def _same_database(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all((a.get(k) or "") == (b.get(k) or "") for k in ("HOST", "PORT", "NAME"))


class Command(BaseCommand):
    help = "Create, migrate and queue a new physical shard database (then add it to SHARD_DATABASE_URLS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("url", help="postgres://user[:password]@host:port/dbname of the new shard.")

    def handle(self, *args: Any, **options: Any) -> None:
        url = options["url"]
        try:
            config = database(url)
        except Exception as exc:
            raise CommandError(f"Not a database URL: {redacted(url)} ({exc}).") from exc
        if not str(config.get("ENGINE", "")).endswith("postgresql"):
            raise CommandError("A shard must be a PostgreSQL database (postgres://…).")
        for alias, existing in settings.DATABASES.items():
            if _same_database(existing, config):
                raise CommandError(f"That database is already configured as {alias}.")
        alias = f"shard_{len(settings.SHARD_ALIASES)}"
        if ensure_database(alias, config):
            self.stdout.write(f"created database {config['NAME']}")
        register_shard_alias(alias, config)
        call_command("migrate", database=alias, verbosity=0)
        self.stdout.write(f"migrated {config['NAME']} as {alias}")
        try:
            with Connection(settings.CELERY_BROKER_URL, connect_timeout=5) as connection:
                shard_queue(alias).bind(connection.channel()).declare()
        except Exception as exc:
            raise CommandError(
                f"The database is ready but RabbitMQ did not answer ({exc.__class__.__name__}); run again."
            ) from exc
        self.stdout.write(f"declared queue {queue_name(alias)}")
        self.stdout.write(
            self.style.SUCCESS(f"\n{alias} is ready. Next:\n")
            + f"  1. Append the URL as entry {len(settings.SHARD_ALIASES)} of SHARD_DATABASE_URLS for the API, the "
            "workers and beat (the order gives the aliases), and restart them.\n"
            f"  2. Give a worker the queue {queue_name(alias)} (WORKER_QUEUES, or the default layout).\n"
            f"  3. Move logical shards onto it: python manage.py move_logical_shard L --to {alias}\n"
        )
