"""The batching apply consumer: a worker applies several prefetched messages of a shard in one transaction.

A Celery worker bootstep takes the shard queues named in ``-Q`` away from Celery's own task consumer
and consumes each with a thread of its own: it gathers ``writes.apply_batch`` messages (as the API
publishes them) until ``WRITES_APPLY_MAX_ROWS`` writes or ``WRITES_APPLY_MAX_WAIT_SECONDS`` after the
first, applies them with one ``apply_batch`` call (one transaction), and acks every one of them only
after COMMIT. Invariants:

- Nothing is acked before its rows are committed; a worker that dies leaves its messages unacked and
  RabbitMQ redelivers them (ids make the repeat harmless).
- A redelivered message is applied alone: a message that kills its worker cannot take others with
  it, and the quorum queue's delivery limit parks it by itself.
- A combined batch that keeps failing for a non-connection reason is split into its messages; each is
  then retried as ``writes.apply_batch`` always was, and rejected to the dead-letter queue past the cap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from celery import bootsteps
from django.conf import settings
from django.db import connections
from kombu import Connection, Consumer, Message

from readmodels.tasks import request_projection
from writes.apply import ApplyResult, PublishedMessage, apply_messages, message_id
from writes.broker import rotated_broker_url
from writes.metrics import DEAD_LETTERED
from writes.publisher import APPLY_TASK
from writes.queues import MSGPACK_CONTENT_TYPE, queue_name, register_serializer, shard_queue
from writes.tasks import record_applied, with_shard_retries

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One broker message of ``writes.apply_batch(shard, groups)``."""

    message: Message
    shard: str
    groups: list[Any]
    writes: int
    redelivered: bool
    #: The task id its publisher gave it: the key of its ``publish_fates`` row (``None``: none usable).
    message_id: str | None


def delivery_of(body: Any, message: Message) -> Delivery | str:
    """The message as a ``Delivery``, or why it cannot be applied."""
    headers = message.headers or {}
    if headers.get("task") != APPLY_TASK:
        return f"not a {APPLY_TASK} message (task {headers.get('task')!r})"
    try:
        (shard, groups), _, _ = body
        writes = sum(len(group[3]) for group in groups)
    except (TypeError, ValueError, IndexError):
        return "malformed apply_batch body"
    if shard not in settings.SHARD_ALIASES:
        return f"unknown shard {shard!r}"
    redelivered = bool(message.delivery_info.get("redelivered")) or int(headers.get("x-delivery-count") or 0) > 0
    return Delivery(message, str(shard), groups, writes, redelivered, message_id(headers.get("id")))


def _tag(message: Message) -> int:
    """The AMQP delivery tag: a number, counted per channel."""
    return int(message.delivery_tag or 0)


class ShardQueueConsumer(threading.Thread):
    """Consumes one shard queue and applies what it gathers in combined transactions."""

    def __init__(self, alias: str, *, max_rows: int, max_wait: float, prefetch: int) -> None:
        queue = shard_queue(alias)
        super().__init__(name=f"apply-{queue.name}", daemon=True)
        self.alias = alias
        self.queue = queue
        self.max_rows = max_rows
        self.max_wait = max_wait
        self.prefetch = prefetch
        self.reconnects = 0
        self.pending: list[Delivery] = []
        # Delivery tags received on the current channel and not yet acked or rejected.
        self.outstanding: set[int] = set()
        self.stopping = threading.Event()
        self.consuming = threading.Event()

    # --- consuming ------------------------------------------------------------------------

    def run(self) -> None:
        register_serializer()
        while not self.stopping.is_set():
            try:
                self._consume()
            except Exception:
                # Whatever was gathered and not acked is redelivered once this connection is gone.
                logger.exception("%s: consumer failed; reconnecting", self.queue.name)
                self.pending = []
                self.outstanding = set()
                self.reconnects += 1  # the next connection starts at the next broker node
                self.stopping.wait(RECONNECT_SECONDS)
            finally:
                self.consuming.clear()
        connections.close_all()

    def _consume(self) -> None:
        with Connection(rotated_broker_url(self.reconnects), heartbeat=0, connect_timeout=5) as connection:
            channel = connection.channel()
            consumer = Consumer(
                channel,
                queues=[self.queue],
                callbacks=[self._received],
                accept=["json", MSGPACK_CONTENT_TYPE],
                on_decode_error=self._undecodable,
                prefetch_count=self.prefetch,
            )
            with consumer:
                self.consuming.set()
                while not self.stopping.is_set():
                    self._gather(connection)
                    if self.pending:
                        self._flush()

    def _received(self, body: Any, message: Message) -> None:
        self.outstanding.add(_tag(message))
        delivery = delivery_of(body, message)
        if isinstance(delivery, str):
            self._dead_letter(message, delivery)
            return
        self.pending.append(delivery)

    def _undecodable(self, message: Message, exc: Exception) -> None:
        self._dead_letter(message, f"cannot decode: {exc}")

    def _dead_letter(self, message: Message, reason: str, shard: str = "") -> None:
        logger.error("%s: message dead-lettered: %s", self.queue.name, reason, extra={"shard": shard or self.alias})
        DEAD_LETTERED.labels(shard or self.alias).inc()
        message.reject(requeue=False)
        self.outstanding.discard(_tag(message))

    def _gather(self, connection: Connection) -> None:
        """Wait for a first message (up to a second, to notice a stop), then take what arrives until
        the batch is full or the wait is over; a redelivered message ends the gathering at once."""
        deadline: float | None = None
        while not self.stopping.is_set():
            if self.pending:
                if deadline is None:
                    deadline = time.monotonic() + self.max_wait
                if sum(d.writes for d in self.pending) >= self.max_rows or self.pending[-1].redelivered:
                    return
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return
            else:
                timeout = 1.0
            try:
                connection.drain_events(timeout=timeout)
            except TimeoutError:
                if not self.pending:
                    continue
                return

    # --- applying -------------------------------------------------------------------------

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        by_shard: dict[str, list[Delivery]] = defaultdict(list)
        alone: list[Delivery] = []
        for delivery in batch:
            (alone if delivery.redelivered else by_shard[delivery.shard]).append(delivery)
        for shard, deliveries in by_shard.items():
            self._apply(shard, deliveries)
        for delivery in alone:
            self._apply(delivery.shard, [delivery])

    def _apply(self, shard: str, deliveries: list[Delivery]) -> None:
        groups = [group for delivery in deliveries for group in delivery.groups]
        messages = [PublishedMessage(delivery.message_id, delivery.groups) for delivery in deliveries]
        started = time.perf_counter()
        attempts = settings.WRITES_APPLY_COMBINED_ATTEMPTS if len(deliveries) > 1 else None
        try:
            result: ApplyResult = with_shard_retries(
                shard, lambda: apply_messages(shard=shard, messages=messages), max_attempts=attempts
            )
        except Exception as exc:
            if len(deliveries) > 1:
                logger.warning(
                    "shard %s: a batch of %d messages failed (%s); applying them one by one",
                    shard,
                    len(deliveries),
                    exc,
                    extra={"shard": shard},
                )
                for delivery in deliveries:
                    self._apply(shard, [delivery])
                return
            # The quorum queue dead-letters a rejected message.
            self._dead_letter(deliveries[0].message, f"{exc.__class__.__name__}: {exc}", shard)
            return
        # Only now, after COMMIT, are the messages done with.
        self._ack([delivery.message for delivery in deliveries])
        record_applied(shard, result, time.perf_counter() - started, groups, messages=len(deliveries))
        if result.applied:
            request_projection(shard)

    def _ack(self, messages: list[Message]) -> None:
        """Ack these messages: with one ``basic.ack(multiple)`` when they are every outstanding delivery up
        to the last of them (the usual case), else one by one."""
        tags = {_tag(message) for message in messages}
        last = max(messages, key=_tag)
        if all(tag in tags for tag in self.outstanding if tag <= _tag(last)):
            last.ack(multiple=True)
        else:
            for message in messages:
                message.ack()
        self.outstanding -= tags


class BatchingApplyStep(bootsteps.StartStopStep):
    """Worker bootstep: the shard queues of ``-Q`` are consumed by ``ShardQueueConsumer`` threads."""

    label = "batching apply consumer"
    # After the pool, before Celery's consumer (always last): started before it, stopped after it.
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.consumers: list[ShardQueueConsumer] = []
        self.queue_names: list[str] = []
        self.aliases: list[str] = []
        if not settings.WRITES_APPLY_BATCHING:
            return
        selected = parent.app.amqp.queues.consume_from
        shard_queues = {queue_name(alias): alias for alias in settings.SHARD_ALIASES}
        self.queue_names = [name for name in selected if name in shard_queues]
        self.aliases = [shard_queues[name] for name in self.queue_names]
        if self.queue_names:
            # Before Celery's own consumer starts: it must never receive these queues' messages.
            parent.app.amqp.queues.deselect(self.queue_names)

    def start(self, parent: Any) -> None:
        if any(consumer.is_alive() for consumer in self.consumers):
            return
        self.consumers = [
            ShardQueueConsumer(
                alias,
                max_rows=settings.WRITES_APPLY_MAX_ROWS,
                max_wait=settings.WRITES_APPLY_MAX_WAIT_SECONDS,
                prefetch=settings.WRITES_APPLY_PREFETCH,
            )
            for alias in self.aliases
        ]
        for consumer in self.consumers:
            consumer.start()
        for consumer in self.consumers:
            consumer.consuming.wait(timeout=30)
        if self.consumers:
            logger.info("batching apply consumer on %s", ", ".join(self.queue_names))

    def stop(self, parent: Any) -> None:
        """Warm shutdown: the batch in hand is committed and acked; the rest goes back to the queue."""
        for consumer in self.consumers:
            consumer.stopping.set()
        for consumer in self.consumers:
            consumer.join(timeout=60)

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
