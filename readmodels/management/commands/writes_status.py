"""``writes_status``: per shard, the write queue's depth, the last applied position, and each
projection's checkpoint and lag; as a table or ``--json``."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connections
from kombu import Connection

from readmodels.projections import PROJECTIONS
from readmodels.projector import freshness
from writes.queues import dead_letter_queue_name, maintenance_queue_name, queue_name


def queue_depths(names: list[str]) -> dict[str, int | None]:
    """Messages ready in each queue (passive declare: creates nothing); None if it does not exist."""
    depths: dict[str, int | None] = {}
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1)
        for name in names:
            channel: Any = conn.channel()  # a failed passive declare closes its channel
            try:
                _, count, _ = channel.queue_declare(queue=name, passive=True)
                depths[name] = int(count)
            except conn.channel_errors:
                depths[name] = None
            finally:
                try:
                    channel.close()
                except conn.connection_errors + conn.channel_errors:
                    pass
    return depths


def writes_status() -> dict[str, Any]:
    names = [*(queue_name(a) for a in settings.SHARD_ALIASES), maintenance_queue_name(), dead_letter_queue_name()]
    broker_error = None
    try:
        depths = queue_depths(names)
    except Exception as exc:  # the status must still show the databases when the broker is down
        depths, broker_error = {}, f"{exc.__class__.__name__}: {exc}"
    shards = []
    for alias in settings.SHARD_ALIASES:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT position, applied_at FROM write_log ORDER BY position DESC LIMIT 1")
            head = cursor.fetchone()
            projections = []
            for projection in PROJECTIONS:
                fresh = freshness(cursor, projection.name)
                projections.append({
                    "name": projection.name,
                    "checkpoint": fresh.position,
                    "checkpoint_applied_at": fresh.time.isoformat() if fresh.time else None,
                    "positions_behind": fresh.behind,
                    "lag_seconds": fresh.lag_seconds,
                })  # fmt: skip
        shards.append({
            "shard": alias,
            "queue": queue_name(alias),
            "queue_depth": depths.get(queue_name(alias)),
            "last_applied_position": head[0] if head else 0,
            "last_applied_at": head[1].isoformat() if head else None,
            "projections": projections,
        })  # fmt: skip
    return {
        "shards": shards,
        "maintenance_queue_depth": depths.get(maintenance_queue_name()),
        "dead_letter_queue_depth": depths.get(dead_letter_queue_name()),
        "broker_error": broker_error,
    }


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


class Command(BaseCommand):
    help = "Queue depth, last applied position and projection lag, per shard."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        status = writes_status()
        if options["json"]:
            self.stdout.write(json.dumps(status, indent=2))
            return
        header = f"{'shard':<10} {'queue depth':>11} {'last position':>13}  {'projection':<22} {'checkpoint':>10} "
        self.stdout.write(header + f"{'behind':>8} {'lag s':>8}")
        for shard in status["shards"]:
            lead = f"{shard['shard']:<10} {_show(shard['queue_depth']):>11} {shard['last_applied_position']:>13}  "
            for index, projection in enumerate(shard["projections"] or [{}]):
                if index:
                    lead = " " * len(lead)
                if not projection:
                    self.stdout.write(lead + "(no projections)")
                    continue
                self.stdout.write(
                    lead + f"{projection['name']:<22} {projection['checkpoint']:>10} "
                    f"{projection['positions_behind']:>8} {projection['lag_seconds']:>8.1f}"
                )
        self.stdout.write(
            f"maintenance queue: {_show(status['maintenance_queue_depth'])}   "
            f"dead letters: {_show(status['dead_letter_queue_depth'])}"
        )
        if status["broker_error"]:
            self.stderr.write(f"broker unavailable: {status['broker_error']}")
