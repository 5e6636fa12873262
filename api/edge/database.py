"""The edge's own asynchronous database access: a small connection pool per database, and one
listening connection per database that turns PostgreSQL notifications into callbacks.

Waiting requests hold neither: a wait is a future, woken by a notification; the pools serve short
batched lookups only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from django.conf import settings
from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = 0.5
#: libpq parameters a database URL's query string may carry (the ``OPTIONS`` dj-database-url makes).
LIBPQ_OPTIONS = ("target_session_attrs", "sslmode", "sslrootcert", "sslcert", "sslkey", "options")


def connection_kwargs(alias: str) -> dict[str, Any]:
    """libpq parameters of a Django database alias. HOST and PORT may be comma-separated lists (a
    primary and its standbys), with ``target_session_attrs=read-write`` choosing the primary."""
    config = settings.DATABASES[alias]
    options = config.get("OPTIONS", {})
    kwargs: dict[str, Any] = {
        "dbname": config["NAME"],
        "user": config.get("USER") or None,
        "password": config.get("PASSWORD") or None,
        "host": config.get("HOST") or None,
        "port": config.get("PORT") or None,
        "connect_timeout": options.get("connect_timeout", 3),
        "application_name": "writes-edge",
        **{name: options[name] for name in LIBPQ_OPTIONS if name in options},
    }
    return {key: value for key, value in kwargs.items() if value is not None}


class Pools:
    """One small pool per database alias, opened lazily by the first query."""

    def __init__(self, aliases: list[str], *, max_size: int, timeout: float) -> None:
        self._pools = {
            alias: AsyncConnectionPool(
                kwargs={**connection_kwargs(alias), "autocommit": True},
                min_size=0,
                max_size=max_size,
                timeout=timeout,
                open=False,
                name=f"edge-{alias}",
            )
            for alias in aliases
        }
        self._opened: set[str] = set()

    async def fetch(self, alias: str, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        pool = self._pools[alias]
        if alias not in self._opened:
            await pool.open(wait=False)
            self._opened.add(alias)
        async with pool.connection() as connection, connection.cursor() as cursor:
            await cursor.execute(sql, params)
            return await cursor.fetchall() if cursor.description is not None else []

    async def close(self) -> None:
        for alias in self._opened:
            await self._pools[alias].close()


Handler = Callable[[str, str], None]  # (alias, payload)


class Listener:
    """LISTENs on ``channels`` on every alias and calls the channel's handler for each notification.

    ``on_connect(alias)`` runs after every (re)connection, once LISTEN is in place: notifications sent
    while the connection was down are lost, so the caller re-checks what it was waiting for then;
    ``on_disconnect(alias)`` runs when notifications stop flowing.
    """

    def __init__(
        self,
        channels_by_alias: dict[str, dict[str, Handler]],
        *,
        on_connect: Callable[[str], None],
        on_disconnect: Callable[[str], None],
    ) -> None:
        self._channels = channels_by_alias
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._listening: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen(alias)) for alias in self._channels]

    async def wait_listening(self, timeout: float) -> None:
        """Until every alias listens (or the timeout passes): for a clean start."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self._listening) < len(self._channels) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def _listen(self, alias: str) -> None:
        handlers = self._channels[alias]
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(**connection_kwargs(alias), autocommit=True)
                async with connection:
                    for channel in handlers:
                        await connection.execute(f'LISTEN "{channel}"')
                    self._listening.add(alias)
                    self._on_connect(alias)
                    async for notification in connection.notifies():
                        handler = handlers.get(notification.channel)
                        if handler is not None:
                            handler(alias, notification.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("listening on %s failed (%s); reconnecting", alias, exc.__class__.__name__)
            finally:
                if alias in self._listening:
                    self._listening.discard(alias)
                    self._on_disconnect(alias)
            await asyncio.sleep(RECONNECT_SECONDS)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
