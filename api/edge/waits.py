"""Waiting that costs nothing: write statuses and projection positions as futures, woken by
notifications, with every lookup batched.

- ``WriteStatuses`` answers ``GET /api/v1/writes/{id}``: concurrent lookups of a shard are one query
  per event-loop turn; a ``?wait=`` registers a future that the shard's ``writes_applied``
  notification re-checks (again one query for every waiter of that shard).
- ``Positions`` answers ``?min_position=``: it tracks each projection's checkpoint from the
  ``projection_advanced`` notifications and wakes the waiters it has passed, with no query at all.
- ``TenantWaits`` bounds how many waits one tenant may hold in this process (429 beyond).

A notification can be missed only while a listening connection is down; on every (re)connection the
edge re-checks everything it is waiting for (``recheck``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import uuid
from collections import defaultdict
from typing import Any

from api.edge.database import Pools
from api.errors import TooManyWaits
from writes.apply import EXISTS_WITH_DIFFERENT_FIELDS
from writes.partitions import id_day_sql

WriteKey = tuple[uuid.UUID, uuid.UUID]  # (tenant_id, write_id)

# The log is read in the partition of each id's day only (writes.partitions).
_STATUSES = f"""
SELECT l.tenant_id, l.write_id, 'applied', l.kind, l.position, l.applied_at, NULL, NULL, NULL
FROM (SELECT w.tenant_id, w.write_id, {id_day_sql("w.tenant_id", "w.write_id")} AS id_day
      FROM unnest(%s::uuid[], %s::uuid[]) AS w(tenant_id, write_id)) AS k
JOIN write_log l ON l.tenant_id = k.tenant_id AND l.write_id = k.write_id AND l.id_day = k.id_day
UNION ALL
SELECT r.tenant_id, r.write_id, 'rejected', r.kind, NULL, NULL, r.code, r.reason, r.rejected_at
FROM rejected_writes r JOIN unnest(%s::uuid[], %s::uuid[]) AS w(tenant_id, write_id)
  ON r.tenant_id = w.tenant_id AND r.write_id = w.write_id
"""  # noqa: S608 (constant SQL)

_CHECKPOINT = "SELECT position FROM projection_checkpoints WHERE projection = %s"


def pending_status(write_id: uuid.UUID) -> dict[str, Any]:
    return {"id": str(write_id), "status": "pending"}


def _status_of(row: tuple[Any, ...]) -> dict[str, Any]:
    _, write_id, status, kind, position, applied_at, code, reason, rejected_at = row
    if status == "applied":
        return {"id": str(write_id), "status": status, "position": position, "kind": kind, "applied_at": applied_at}
    return {
        "id": str(write_id),
        "status": status,
        "kind": kind,
        "code": code,
        "reason": reason,
        "rejected_at": rejected_at,
    }


class WriteStatuses:
    def __init__(self, pools: Pools) -> None:
        self._pools = pools
        # Lookups asked for and not yet sent, per shard; each key's futures get the answer.
        self._asked: dict[str, dict[WriteKey, list[asyncio.Future[dict[str, Any] | None]]]] = defaultdict(dict)
        self._flushing: set[str] = set()
        # Waiting requests per shard: key → futures resolved once the write is no longer pending.
        self._waiting: dict[str, dict[WriteKey, list[asyncio.Future[dict[str, Any]]]]] = defaultdict(dict)
        self._rechecking: set[str] = set()
        self._recheck_again: set[str] = set()

    async def status(self, shard: str, key: WriteKey, *, wait: float) -> dict[str, Any]:
        """The write's status; with ``wait`` > 0, waits up to that long while it is pending."""
        if wait <= 0:
            return await self._lookup(shard, key) or pending_status(key[1])
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, Any]] = loop.create_future()
        # Registered before the first lookup, so an apply committed in between is not missed.
        self._waiting[shard].setdefault(key, []).append(done)
        try:
            found = await self._lookup(shard, key)
            if found is not None:
                return found
            try:
                return await asyncio.wait_for(done, wait)
            except TimeoutError:
                return pending_status(key[1])
        finally:
            self._forget(shard, key, done)

    def _forget(self, shard: str, key: WriteKey, done: asyncio.Future[dict[str, Any]]) -> None:
        waiters = self._waiting[shard].get(key)
        if waiters is None:
            return
        if done in waiters:
            waiters.remove(done)
        if not waiters:
            del self._waiting[shard][key]

    # --- batched lookups --------------------------------------------------------------------

    def _lookup(self, shard: str, key: WriteKey) -> asyncio.Future[dict[str, Any] | None]:
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._asked[shard].setdefault(key, []).append(future)
        if shard not in self._flushing:
            self._flushing.add(shard)
            asyncio.get_running_loop().create_task(self._flush(shard))
        return future

    async def _flush(self, shard: str) -> None:
        try:
            while self._asked[shard]:
                await asyncio.sleep(0)  # let this turn's other requests join the query
                asked, self._asked[shard] = self._asked[shard], {}
                try:
                    found = await self._query(shard, list(asked))
                except Exception as exc:
                    for futures in asked.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                                future.exception()
                    continue
                for key, futures in asked.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(found.get(key))
        finally:
            self._flushing.discard(shard)

    async def _query(self, shard: str, keys: list[WriteKey]) -> dict[WriteKey, dict[str, Any]]:
        tenants = [tenant for tenant, _ in keys]
        writes = [write for _, write in keys]
        rows = await self._pools.fetch(shard, _STATUSES, [tenants, writes, tenants, writes])
        found: dict[WriteKey, dict[str, Any]] = {}
        for row in sorted(rows, key=lambda row: row[2] != "applied"):
            key = (row[0], row[1])
            if key not in found:
                found[key] = _status_of(row)  # applied wins over a stale rejection
            elif row[6] == EXISTS_WITH_DIFFERENT_FIELDS:
                # The id was applied, and later reused by a write with other content: both are shown.
                found[key]["conflict"] = {k: v for k, v in _status_of(row).items() if k not in ("id", "status")}
        return found

    # --- notifications ------------------------------------------------------------------------

    def recheck(self, shard: str, payload: str = "") -> None:
        """A batch committed on ``shard`` (or notifications resumed): look up every waiter, once."""
        if not self._waiting.get(shard):
            return
        if shard in self._rechecking:
            self._recheck_again.add(shard)
            return
        self._rechecking.add(shard)
        asyncio.get_running_loop().create_task(self._recheck(shard))

    async def _recheck(self, shard: str) -> None:
        try:
            while True:
                self._recheck_again.discard(shard)
                keys = list(self._waiting[shard])
                if keys:
                    try:
                        found = await self._query(shard, keys)
                    except Exception:  # the shard is unreachable: waiters time out as pending
                        found = {}
                    for key, status in found.items():
                        for future in self._waiting[shard].get(key, []):
                            if not future.done():
                                future.set_result(status)
                if shard not in self._recheck_again:
                    return
        finally:
            self._rechecking.discard(shard)

    def waiting(self) -> int:
        return sum(len(keys) for keys in self._waiting.values())


class Positions:
    """Projection checkpoints per shard as notified, and the requests waiting for them to pass a position."""

    def __init__(self, pools: Pools) -> None:
        self._pools = pools
        self._known: dict[tuple[str, str], int] = {}
        self._waiting: dict[tuple[str, str], list[tuple[int, int, asyncio.Future[None]]]] = defaultdict(list)
        self._order = itertools.count()

    async def reached(self, shard: str, projection: str, position: int, *, timeout: float) -> bool:
        """Whether ``projection`` on ``shard`` has read the log up to ``position``, waiting up to ``timeout``."""
        slot = (shard, projection)
        if self._known.get(slot, -1) >= position:
            return True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (position, next(self._order), done)
        heapq.heappush(self._waiting[slot], entry)
        try:
            await self._read_checkpoint(shard, projection)
            if not done.done():
                await asyncio.wait_for(asyncio.shield(done), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if not done.done():
                done.cancel()
                heap = self._waiting[slot]
                heap.remove(entry)
                heapq.heapify(heap)

    async def _read_checkpoint(self, shard: str, projection: str) -> None:
        rows = await self._pools.fetch(shard, _CHECKPOINT, [projection])
        if rows:
            self.advance(shard, projection, int(rows[0][0]))

    def recheck(self, shard: str) -> None:
        """Notifications (re)started for ``shard``: read the checkpoints someone is waiting on."""
        for slot, heap in self._waiting.items():
            if slot[0] == shard and heap:
                asyncio.get_running_loop().create_task(self._read_checkpoint_quietly(*slot))

    async def _read_checkpoint_quietly(self, shard: str, projection: str) -> None:
        try:
            await self._read_checkpoint(shard, projection)
        except Exception:  # unreachable: the waiters time out and say so
            return

    def on_notification(self, shard: str, payload: str) -> None:
        projection, _, position = payload.rpartition(":")
        if projection and position.isascii() and position.isdigit():
            self.advance(shard, projection, int(position))

    def advance(self, shard: str, projection: str, position: int) -> None:
        slot = (shard, projection)
        if position > self._known.get(slot, -1):
            self._known[slot] = position
        heap = self._waiting.get(slot)
        while heap and heap[0][0] <= self._known[slot]:
            _, _, done = heapq.heappop(heap)
            if not done.done():
                done.set_result(None)

    def forget(self, shard: str) -> None:
        """Notifications stopped for ``shard``: what is known may be stale from now on (never too high,
        positions only grow, but the next reader asks the database again)."""
        for slot in [slot for slot in self._known if slot[0] == shard]:
            del self._known[slot]


class TenantWaits:
    """At most ``limit`` concurrent holders per tenant in this process (429 beyond)."""

    def __init__(self, limit: int, *, what: str = "waits") -> None:
        self.limit = limit
        self.what = what
        self._held: dict[uuid.UUID, int] = {}

    def acquire(self, tenant_id: uuid.UUID) -> None:
        held = self._held.get(tenant_id, 0)
        if held >= self.limit:
            raise TooManyWaits(f"At most {self.limit} concurrent {self.what} per tenant; retry later.")
        self._held[tenant_id] = held + 1

    def release(self, tenant_id: uuid.UUID) -> None:
        held = self._held.get(tenant_id, 0) - 1
        if held > 0:
            self._held[tenant_id] = held
        else:
            self._held.pop(tenant_id, None)
