"""The edge's coalescing publisher: concurrent requests become one confirmed AMQP message per shard.

Requests hand their write group to ``EdgePublisher.publish`` and await it. A flusher task per shard
gathers what arrives within ``linger`` seconds (or up to the write and byte caps), publishes one
persistent ``writes.apply_batch`` task message and goes on with the next one while the broker's
confirm is outstanding: up to ``max_in_flight`` messages per process wait for confirms at once.

Each request has a deadline. A group still queued at its deadline is dropped and never published. A
group already published whose confirm is late, or whose connection failed while it was on the wire, is
settled through ``writes.fates``: the edge marks the message abandoned on its shard (answer 503, the
applier will skip it) unless the applier already claimed it (answer 202). So an error answer always
means "not applied, not later either".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiormq
import msgspec
from aiormq.abc import AbstractChannel, AbstractConnection
from pamqp.commands import Basic

from writes.broker import broker_urls
from writes.errors import BrokerUnavailable, PublishError, QueueFull
from writes.metrics import PUBLISH_CONFIRM_SECONDS, WRITES_PER_MESSAGE
from writes.publisher import WriteGroup, apply_task_message
from writes.queues import MSGPACK_CONTENT_TYPE, dead_letter_queue, maintenance_queue, queue_name, shard_queue

logger = logging.getLogger(__name__)

_msgpack = msgspec.msgpack.Encoder()

QUEUED, SENT, GONE = 0, 1, 2
NACK_RESET_SECONDS = 2.0


class PublishOutcomeUnknown(BrokerUnavailable):
    """The confirm was late and the shard could not be asked whether the message was applied."""


class PublishInterrupted(BrokerUnavailable):
    """The connection went while a message was being published or awaited its confirm: its frames may
    have reached the queue (a cluster node stopping after its queue took the message), so it is settled
    like a late confirm, never simply answered 503."""


@dataclass(slots=True, eq=False)
class _Pending:
    group: WriteGroup
    writes: int
    nbytes: int
    deadline: float
    future: asyncio.Future[None]
    state: int = QUEUED
    message_id: str = ""


@dataclass(slots=True)
class _ShardQueue:
    items: deque[_Pending] = field(default_factory=deque)
    writes: int = 0
    nbytes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    full: asyncio.Event = field(default_factory=asyncio.Event)


#: Settles a late-confirmed message on its shard: True if abandoned (never applied), False if applied.
AbandonMessage = Callable[[str, str], Awaitable[bool]]


class EdgePublisher:
    def __init__(
        self,
        *,
        broker_url: str,
        linger_seconds: float,
        max_writes: int,
        max_bytes: int,
        timeout_seconds: float,
        max_in_flight: int,
        abandon: AbandonMessage,
    ) -> None:
        self.broker_url = broker_url
        # Several nodes (";"-separated): tried in turn from the one last connected to; a lost connection
        # moves on to the next node first, so a dead node costs one failed attempt, not every reconnect.
        self.nodes = broker_urls(broker_url)
        self._node = 0
        self._lost = False
        self._nacked_since: float | None = None
        self.linger_seconds = linger_seconds
        self.max_writes = max_writes
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        self._abandon = abandon
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._shards: dict[str, _ShardQueue] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}
        self._sends: set[asyncio.Task[None]] = set()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self._declared: set[str] = set()
        self._origin = f"{os.getpid()}@api"

    # --- request side ---------------------------------------------------------------------

    async def publish(self, shard: str, group: WriteGroup, *, nbytes: int) -> None:
        """Return once the broker confirmed ``group``; raise ``PublishError`` if it was not accepted."""
        loop = asyncio.get_running_loop()
        pending = _Pending(
            group=group,
            writes=len(group[3]),
            nbytes=nbytes,
            deadline=loop.time() + self.timeout_seconds,
            future=loop.create_future(),
        )
        queued = self._shard(shard)
        queued.items.append(pending)
        queued.writes += pending.writes
        queued.nbytes += nbytes
        queued.wake.set()
        if queued.writes >= self.max_writes or queued.nbytes >= self.max_bytes:
            queued.full.set()
        # A timer, not ``wait_for``: no task per request on the hot path.
        timer = asyncio.get_running_loop().call_later(self.timeout_seconds, _expire, pending)
        try:
            await pending.future
        finally:
            timer.cancel()

    def _shard(self, shard: str) -> _ShardQueue:
        queued = self._shards.get(shard)
        if queued is None:
            queued = self._shards[shard] = _ShardQueue()
            self._flushers[shard] = asyncio.get_running_loop().create_task(self._flush_forever(shard, queued))
        return queued

    # --- flushing -------------------------------------------------------------------------

    async def _flush_forever(self, shard: str, queued: _ShardQueue) -> None:
        while True:
            await queued.wake.wait()
            if queued.items and self.linger_seconds > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queued.full.wait(), self.linger_seconds)
            await self._in_flight.acquire()
            batch = self._take(queued)
            if not batch:
                self._in_flight.release()
                continue
            task = asyncio.get_running_loop().create_task(self._send(shard, batch))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    def _take(self, queued: _ShardQueue) -> list[_Pending]:
        """Up to the caps, oldest first; groups whose requester gave up are dropped here, unpublished."""
        now = asyncio.get_running_loop().time()
        batch: list[_Pending] = []
        writes = nbytes = 0
        while queued.items:
            item = queued.items[0]
            if batch and (writes + item.writes > self.max_writes or nbytes + item.nbytes > self.max_bytes):
                break
            queued.items.popleft()
            queued.writes -= item.writes
            queued.nbytes -= item.nbytes
            if item.state == GONE or item.future.done() or item.deadline <= now:
                continue  # its requester was answered (or left): never published
            item.state = SENT
            batch.append(item)
            writes += item.writes
            nbytes += item.nbytes
        if not queued.items:
            queued.wake.clear()
        if queued.writes < self.max_writes and queued.nbytes < self.max_bytes:
            queued.full.clear()
        return batch

    async def _send(self, shard: str, batch: list[_Pending]) -> None:
        """Publish one message for ``batch`` and settle every request in it the same way."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            task_id, headers, body = apply_task_message(shard, [item.group for item in batch])
            headers["origin"] = self._origin
            publishing = loop.create_task(self._publish_message(shard, task_id, headers, _msgpack.encode(body)))
            # Not cancelled on a timeout: the frames may be on the wire already. Its outcome no longer
            # matters then (the fate row decides), but it is retrieved so that nothing is logged twice.
            publishing.add_done_callback(_retrieve)
            deadline = min(item.deadline for item in batch)
            done, _ = await asyncio.wait({publishing}, timeout=max(0.0, deadline - loop.time()))
            if done:
                try:
                    publishing.result()
                except PublishInterrupted:
                    if await self._settle_late(shard, task_id):
                        raise BrokerUnavailable(
                            "The broker connection was lost before the confirm; the write will not be applied."
                        ) from None
            elif await self._settle_late(shard, task_id):
                raise BrokerUnavailable("The broker did not confirm the write in time; it will not be applied.")
        except PublishError as exc:
            _fail(batch, exc)
        except Exception as exc:  # never let a send die silently: fail these requests, keep serving
            logger.exception("publish to %s failed", shard)
            _fail(batch, BrokerUnavailable(f"Publishing failed: {exc.__class__.__name__}."))
        else:
            for item in batch:
                if not item.future.done():
                    item.future.set_result(None)
            PUBLISH_CONFIRM_SECONDS.observe(loop.time() - started)
            WRITES_PER_MESSAGE.observe(sum(item.writes for item in batch))
        finally:
            self._in_flight.release()

    async def _settle_late(self, shard: str, message_id: str) -> bool:
        """The confirm is late: True if the message is now abandoned (never applied), False if the
        applier had already committed it (so the writes are applied and the answer is 202)."""
        try:
            return await asyncio.wait_for(self._abandon(shard, message_id), self.timeout_seconds)
        except Exception as exc:
            raise PublishOutcomeUnknown(
                "The broker did not confirm in time and whether the writes were applied could not be "
                "settled; retry with the same ids (a retry never applies a write twice)."
            ) from exc

    async def _publish_message(self, shard: str, task_id: str, headers: dict[str, Any], body: bytes) -> None:
        channel = await self._ensure_channel(shard)
        properties = Basic.Properties(
            content_type=MSGPACK_CONTENT_TYPE,
            content_encoding="binary",
            delivery_mode=2,
            correlation_id=task_id,
            message_id=task_id,
            headers=headers,
        )
        try:
            confirmation = await channel.basic_publish(
                body,
                exchange=shard_queue(shard).exchange.name,
                routing_key=queue_name(shard),
                properties=properties,
                mandatory=True,
            )
        except aiormq.exceptions.PublishError as exc:  # returned: no queue is bound under that name
            raise BrokerUnavailable(f"The queue for {shard} does not exist.") from exc
        except aiormq.exceptions.DeliveryError as exc:
            await self._nacked()
            raise QueueFull(f"The queue for {shard} is full.") from exc
        except (aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.CancelledError) as exc:
            await self._reset()
            raise PublishInterrupted(f"The broker is unavailable ({exc.__class__.__name__}).") from exc
        if isinstance(confirmation, Basic.Nack):
            await self._nacked()
            raise QueueFull(f"The queue for {shard} is full.")
        self._nacked_since = None

    async def _nacked(self) -> None:
        """Nacks for longer than ``NACK_RESET_SECONDS`` in a row: open a new channel. After a quorum
        queue's leader was lost, a channel may go on being nacked although the queue has room (seen in
        the broker node kill fault test); a new channel publishes normally, and to a queue that really is
        full a reconnection every few seconds costs nothing."""
        now = asyncio.get_running_loop().time()
        if self._nacked_since is None:
            self._nacked_since = now
        elif now - self._nacked_since > NACK_RESET_SECONDS:
            self._nacked_since = None
            logger.warning("publishes nacked for over %.0f s: opening a new channel", NACK_RESET_SECONDS)
            await self._reset()

    async def _ensure_channel(self, shard: str) -> AbstractChannel:
        async with self._connecting:
            if self._channel is None or self._channel.is_closed:
                await self._reset()
                await self._connect()
            channel = self._channel
            if channel is None:
                raise BrokerUnavailable("The broker connection closed while opening.")
            queue = shard_queue(shard)
            if queue.name not in self._declared:
                try:
                    await _declare(channel, queue)
                except (aiormq.exceptions.AMQPError, ConnectionError, OSError) as exc:
                    await self._reset()
                    raise BrokerUnavailable(f"The queue for {shard} cannot be declared ({exc}).") from exc
                self._declared.add(queue.name)
            return channel

    async def _connect(self) -> None:
        """Open a confirming channel on the first node that answers, each node given an equal share of
        the request timeout."""
        if self._lost:
            self._node = (self._node + 1) % len(self.nodes)
            self._lost = False
        per_node = max(0.2, self.timeout_seconds / len(self.nodes))
        failure: BaseException | None = None
        for step in range(len(self.nodes)):
            node = (self._node + step) % len(self.nodes)
            try:
                self._connection = await asyncio.wait_for(aiormq.connect(self.nodes[node]), timeout=per_node)
                self._channel = await asyncio.wait_for(
                    self._connection.channel(publisher_confirms=True), timeout=per_node
                )
                for extra in (dead_letter_queue(), maintenance_queue()):
                    await asyncio.wait_for(_declare(self._channel, extra), timeout=per_node)
            except (aiormq.exceptions.AMQPError, ConnectionError, OSError, TimeoutError) as exc:
                failure = exc
                await self._reset()
                self._lost = False
                continue
            self._node = node
            return
        raise BrokerUnavailable(
            f"No broker node can be reached ({failure.__class__.__name__}, {len(self.nodes)} tried)."
        ) from failure

    async def _reset(self) -> None:
        if self._channel is not None:
            self._lost = True  # the next connection starts at the next node
        connection, self._connection, self._channel = self._connection, None, None
        self._declared = set()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def close(self) -> None:
        for task in self._flushers.values():
            task.cancel()
        if self._sends:
            await asyncio.wait(self._sends, timeout=self.timeout_seconds)
        await self._reset()


async def _declare(channel: AbstractChannel, queue: Any) -> None:
    """Declare a kombu ``Queue`` (exchange, queue with its arguments, binding) on an aiormq channel."""
    exchange = queue.exchange
    await channel.exchange_declare(exchange.name, exchange_type=exchange.type, durable=exchange.durable)
    await channel.queue_declare(queue.name, durable=queue.durable, arguments=dict(queue.queue_arguments or {}))
    await channel.queue_bind(queue.name, exchange.name, routing_key=queue.routing_key)


def _fail(batch: list[_Pending], exc: PublishError) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)
            item.future.exception()  # retrieved: a requester that already gave up logs nothing


def _expire(pending: _Pending) -> None:
    """A request's deadline: a group not yet sent is dropped, never to be published; one on the wire is
    settled with its whole message by ``_send`` at the message's deadline."""
    if pending.state == QUEUED and not pending.future.done():
        pending.state = GONE
        pending.future.set_exception(
            BrokerUnavailable("The broker did not take the write in time; nothing was published.")
        )


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
