"""Which servers the write path runs on, and the role each plays now: every broker node of
``CELERY_BROKER_URL`` (answers or not) and every server a shard URL names (primary, standby or
unreachable). ``writes_status`` prints it; it asks each server directly, one short connection each."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from django.conf import settings
from kombu import Connection

from writes.broker import broker_urls, redacted

UP, UNREACHABLE, PRIMARY, STANDBY = "up", "unreachable", "primary", "standby"


@dataclass(frozen=True, slots=True)
class ServerRole:
    server: str  # a broker URL without credentials, or host:port
    role: str


def broker_node_roles(timeout: float = 1.0) -> list[ServerRole]:
    roles = []
    for url in broker_urls():
        try:
            with Connection(url, connect_timeout=timeout) as connection:
                connection.connect()
            role = UP
        except Exception:
            role = UNREACHABLE
        roles.append(ServerRole(redacted(url), role))
    return roles


def shard_server_roles(alias: str, timeout: int = 1) -> list[ServerRole]:
    """Each server of the shard's URL in turn (not libpq's choice of one): a standby is in recovery."""
    config = settings.DATABASES[alias]
    hosts = str(config.get("HOST") or "127.0.0.1").split(",")
    ports = str(config.get("PORT") or "5432").split(",")
    ports = ports + [ports[-1]] * (len(hosts) - len(ports))
    roles = []
    for host, port in zip(hosts, ports, strict=False):
        try:
            with psycopg.connect(
                host=host,
                port=port,
                dbname=config["NAME"],
                user=config.get("USER") or None,
                password=config.get("PASSWORD") or None,
                connect_timeout=timeout,
                application_name="writes-topology",
            ) as connection:
                row = connection.execute("SELECT pg_is_in_recovery()").fetchone()
            role = STANDBY if row is not None and row[0] else PRIMARY
        except psycopg.Error:
            role = UNREACHABLE
        roles.append(ServerRole(f"{host}:{port}", role))
    return roles
