"""Broker connections: ``CELERY_BROKER_URL`` names one RabbitMQ node or several (``;``-separated), and a
connection opened here has tried every node once before it gives up.

kombu's own ``connect()`` tries two URLs at most; a three-node cluster with two nodes gone must still
reach the third: the readiness check connects through ``broker_connection``, and the shard consumer,
which reconnects in a loop, starts each new connection at the next node (``rotated_broker_url``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from kombu import Connection


def broker_urls(url: str | None = None) -> list[str]:
    """The nodes of ``url`` (default: ``CELERY_BROKER_URL``), in the order they are tried."""
    return [part.strip() for part in (url or settings.CELERY_BROKER_URL).split(";") if part.strip()]


def broker_connection(url: str | None = None, **options: Any) -> Connection:
    """A connected kombu ``Connection``: each node tried in turn, once, without sleeping in between;
    raises the last node's error if none answers. Use it as a context manager."""
    nodes = broker_urls(url)
    connection = Connection(";".join(nodes), **options)
    try:
        connection.ensure_connection(max_retries=len(nodes) - 1, interval_start=0, interval_step=0)
    except BaseException:
        connection.release()
        raise
    return connection


def rotated_broker_url(turn: int, url: str | None = None) -> str:
    """The node list starting at node ``turn`` (modulo their number): a client that opens a new lazy
    kombu ``Connection`` on every reconnect reaches every node over successive attempts."""
    nodes = broker_urls(url)
    start = turn % len(nodes)
    return ";".join(nodes[start:] + nodes[:start])


def redacted(url: str) -> str:
    """The URL(s) without their credentials, for messages and logs."""
    parts = []
    for part in url.split(";"):
        scheme, _, rest = part.partition("://")
        parts.append(f"{scheme}://***@{rest.rsplit('@', 1)[1]}" if "@" in rest else part)
    return ";".join(parts)
