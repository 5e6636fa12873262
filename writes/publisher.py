"""The coalescing publisher: many concurrent requests become one confirmed AMQP message per shard.

Request threads hand their writes to ``CoalescingPublisher.publish`` and block; one background thread
per process gathers everything that arrives within a few milliseconds (or up to a size cap), publishes
one persistent Celery task message per shard, waits for the broker's confirm, then releases the
requests. A confirm costs one round trip whether it covers 1 write or 10,000.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from amqp.exceptions import MessageNacked
from django.conf import settings
from kombu import Connection, Producer, Queue
from kombu.exceptions import OperationalError as KombuOperationalError

from writes.errors import BrokerUnavailable, PublishError, QueueFull
from writes.metrics import PUBLISH_CONFIRM_SECONDS, WRITES_PER_MESSAGE
from writes.queues import (
    MSGPACK_CONTENT_TYPE,
    dead_letter_queue,
    maintenance_queue,
    queue_name,
    register_serializer,
    shard_queue,
)

logger = logging.getLogger(__name__)

APPLY_TASK = "writes.apply_batch"

# One group is what one request wrote: [tenant_id, kind, received_at, [[write_id, key, payload, occurred_at], ...]]
WriteGroup = list[Any]


@dataclass
class _Pending:
    shard: str
    group: WriteGroup
    size: int
    future: Future[None] = field(default_factory=Future)


class CoalescingPublisher:
    def __init__(
        self,
        *,
        broker_url: str,
        linger_seconds: float,
        max_writes: int,
        timeout_seconds: float,
    ) -> None:
        self.broker_url = broker_url
        self.linger_seconds = linger_seconds
        self.max_writes = max_writes
        self.timeout_seconds = timeout_seconds
        self._pending: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._declared: set[str] = set()
        register_serializer()  # the msgpack serializer must exist before the first publish
        self._thread = threading.Thread(target=self._run, name="writes-publisher", daemon=True)
        self._thread.start()

    # --- request side ---------------------------------------------------------------------

    def publish(self, shard: str, group: WriteGroup) -> None:
        """Block until the group is confirmed by the broker; raise ``PublishError`` otherwise."""
        pending = _Pending(shard=shard, group=group, size=len(group[3]))
        self._pending.put(pending)
        try:
            pending.future.result(timeout=self.timeout_seconds)
        except FutureTimeout as exc:
            # The message may still be confirmed later; ids make the client's retry harmless.
            raise BrokerUnavailable("The broker did not confirm the write in time.") from exc

    # --- publisher thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            batch = [first]
            size = first.size
            deadline = time.monotonic() + self.linger_seconds
            while size < self.max_writes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._pending.get(timeout=remaining)
                except queue.Empty:
                    break
                batch.append(item)
                size += item.size
            self._flush(batch)

    def _flush(self, batch: list[_Pending]) -> None:
        by_shard: dict[str, list[_Pending]] = defaultdict(list)
        for item in batch:
            by_shard[item.shard].append(item)
        for shard, items in by_shard.items():
            try:
                self._publish_message(shard, [item.group for item in items])
            except PublishError as exc:
                for item in items:
                    item.future.set_exception(exc)
            except Exception as exc:  # never let the thread die: fail these requests, keep serving
                logger.exception("publish to %s failed", shard)
                for item in items:
                    item.future.set_exception(BrokerUnavailable(f"Publishing failed: {exc.__class__.__name__}."))
            else:
                for item in items:
                    item.future.set_result(None)

    def _publish_message(self, shard: str, groups: list[WriteGroup]) -> None:
        started = time.monotonic()
        deadline = started + self.timeout_seconds
        try:
            self._publish_once(shard, groups)
        except BrokerUnavailable:
            # A connection that died while idle fails the first publish after it: reconnect once.
            if time.monotonic() + 0.1 > deadline:
                raise
            self._publish_once(shard, groups)
        PUBLISH_CONFIRM_SECONDS.observe(time.monotonic() - started)
        WRITES_PER_MESSAGE.observe(sum(len(group[3]) for group in groups))

    def _publish_once(self, shard: str, groups: list[WriteGroup]) -> None:
        producer = self._ensure_producer()
        target = shard_queue(shard)
        task_id, headers, body = apply_task_message(shard, groups)
        try:
            producer.publish(
                body,
                exchange=target.exchange,
                routing_key=queue_name(shard),
                serializer=MSGPACK_CONTENT_TYPE,
                headers=headers,
                correlation_id=task_id,
                delivery_mode=2,
                declare=[target] if shard not in self._declared else None,
                confirm_timeout=self.timeout_seconds,
                timeout=self.timeout_seconds,
                retry=False,
            )
            self._declared.add(shard)
        except MessageNacked as exc:
            raise QueueFull(f"The queue for {shard} is full.") from exc
        except Exception as exc:
            self._reset_connection()
            raise BrokerUnavailable(f"The broker is unavailable ({exc.__class__.__name__}).") from exc

    def _ensure_producer(self) -> Producer:
        if self._producer is not None:
            return self._producer
        try:
            connection = Connection(
                self.broker_url,
                connect_timeout=self.timeout_seconds,
                transport_options={"confirm_publish": True},
                heartbeat=0,
            )
            connection.connect()
            channel = connection.channel()
            for extra in (dead_letter_queue(), maintenance_queue()):
                extra.bind(channel).declare()
        except (KombuOperationalError, OSError) as exc:
            raise BrokerUnavailable(f"The broker cannot be reached ({exc}).") from exc
        self._connection = connection
        self._producer = Producer(channel)
        self._declared = set()
        return self._producer

    def _reset_connection(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # already broken; nothing more to do
                logger.debug("closing a broken broker connection failed", exc_info=True)


def apply_task_message(shard: str, groups: list[WriteGroup]) -> tuple[str, dict[str, Any], tuple[Any, ...]]:
    """Celery protocol 2 headers and body of ``writes.apply_batch(shard, groups)``: (task id, headers, body)."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": APPLY_TASK,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": f"({shard!r}, <{sum(len(g[3]) for g in groups)} writes>)",
        "kwargsrepr": "{}",
        "origin": f"{os.getpid()}@api",
        "ignore_result": True,
    }
    body: tuple[Any, ...] = (
        (shard, groups),
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    )
    return task_id, headers, body


def publish_apply_message(target: Queue, shard: str, groups: list[WriteGroup]) -> None:
    """Publish one ``apply_batch`` message to ``target`` and wait for the broker's confirm (worker side).

    Used to forward writes that reached a shard their logical shard has left; raises on any failure.
    """
    from celery import current_app

    register_serializer()
    task_id, headers, body = apply_task_message(shard, groups)
    with current_app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange=target.exchange,
            routing_key=target.routing_key,
            serializer=MSGPACK_CONTENT_TYPE,
            headers=headers,
            correlation_id=task_id,
            delivery_mode=2,
            declare=[target],
            retry=False,
        )


_publisher: CoalescingPublisher | None = None
_publisher_pid: int | None = None
_publisher_lock = threading.Lock()


def get_publisher() -> CoalescingPublisher:
    """The process's publisher, started on first use (and again in a forked child)."""
    global _publisher, _publisher_pid
    if _publisher is not None and _publisher_pid == os.getpid():
        return _publisher
    with _publisher_lock:
        if _publisher is None or _publisher_pid != os.getpid():
            register_serializer()
            _publisher = CoalescingPublisher(
                broker_url=settings.CELERY_BROKER_URL,
                linger_seconds=settings.WRITES_PUBLISH_LINGER_SECONDS,
                max_writes=settings.WRITES_PUBLISH_MAX_WRITES,
                timeout_seconds=settings.WRITES_PUBLISH_TIMEOUT_SECONDS,
            )
            _publisher_pid = os.getpid()
    return _publisher
