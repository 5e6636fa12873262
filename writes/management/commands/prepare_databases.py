"""``prepare_databases``: check PostgreSQL and RabbitMQ answer, and create any missing database.

Run by ``make run`` before ``migrate``; says which service is down, where it looked and how to start it.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql
from psycopg.conninfo import make_conninfo

from writes.broker import redacted
from writes.readiness import broker_reachable

POSTGRES_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
RABBITMQ_HINT = "rabbitmq-server -detached"


class Command(BaseCommand):
    help = "Check the database server and the broker, and create the control and shard databases if missing."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--wait",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="keep retrying for this long while a server does not answer yet (containers starting)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        deadline = time.monotonic() + options["wait"]
        while True:
            try:
                self._prepare()
                return
            except CommandError as exc:
                if time.monotonic() >= deadline:
                    raise
                self.stderr.write(f"{exc} Retrying.")
                time.sleep(2)

    def _prepare(self) -> None:
        for alias, config in settings.DATABASES.items():
            if ensure_database(alias, config):
                self.stdout.write(f"created database {config['NAME']} ({alias})")
        if not broker_reachable():
            raise CommandError(
                f"RabbitMQ does not answer at {redacted(settings.CELERY_BROKER_URL)}. "
                f"Start it (for example: {RABBITMQ_HINT}) or set CELERY_BROKER_URL."
            )
        self.stdout.write("PostgreSQL and RabbitMQ answer; databases exist.")


def ensure_database(alias: str, config: dict[str, Any]) -> bool:
    """Create the database of ``config`` if it is missing; True when it was created."""
    where = f"{config.get('HOST') or 'local socket'}:{config.get('PORT') or 5432}"
    conninfo = make_conninfo(
        dbname="postgres",
        host=config.get("HOST") or None,
        port=config.get("PORT") or None,
        user=config.get("USER") or None,
        password=config.get("PASSWORD") or None,
        connect_timeout=3,
        # A primary and its standbys: the database is created on the primary.
        target_session_attrs=config.get("OPTIONS", {}).get("target_session_attrs") or None,
    )
    try:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [config["NAME"]]).fetchone()
            if exists:
                return False
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(config["NAME"])))
            return True
    except psycopg.OperationalError as exc:
        raise CommandError(
            f"PostgreSQL does not answer at {where} (database {alias}): {str(exc).strip()}. "
            f"Start it (for example: {POSTGRES_HINT}) or set DATABASE_URL / SHARD_DATABASE_URLS."
        ) from exc
