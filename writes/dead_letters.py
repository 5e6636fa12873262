"""The dead-letter queue: messages a shard queue gave up on, and putting them back.

A shard queue dead-letters a message the worker rejected for good (a task that failed after its capped
retries) or one delivered more than ``x-delivery-limit`` times; RabbitMQ records why in ``x-death``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import amqp
from django.conf import settings
from kombu import Connection, serialization
from kombu.serialization import dumps, loads

from writes.queues import dead_letter_queue, dead_letter_queue_name, register_serializer

logger = logging.getLogger(__name__)

# Headers the broker adds while dead-lettering or redelivering; a replayed message starts afresh.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")
REPLAY_COUNT_HEADER = "x-replayed"


class ReplayError(Exception):
    """A dead letter could not be put back; it stays in the dead-letter queue."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    task_id: str
    task: str
    queue: str  # the queue it was dead-lettered from, and goes back to
    reason: str  # "rejected" (failed for good), "delivery_limit", …
    deaths: int
    died_at: datetime | None
    writes: int | None  # writes it carries, when the body can be read
    replayed: int  # how often it was replayed before

    def describe(self) -> str:
        when = self.died_at.isoformat() if self.died_at else "?"
        writes = "?" if self.writes is None else str(self.writes)
        return (
            f"{self.task_id}  {self.task}  from {self.queue}  reason={self.reason}  deaths={self.deaths}  "
            f"at={when}  writes={writes}  replayed={self.replayed}"
        )


def dead_letter_of(message: amqp.Message) -> DeadLetter:
    headers: dict[str, Any] = dict(message.properties.get("application_headers") or {})
    deaths = headers.get("x-death") or []
    first = deaths[0] if deaths else {}
    queue = str(first.get("queue") or headers.get("x-first-death-queue") or "")
    died_at = first.get("time")
    return DeadLetter(
        task_id=str(headers.get("id") or message.properties.get("correlation_id") or "?"),
        task=str(headers.get("task") or "?"),
        queue=queue,
        reason=str(first.get("reason") or headers.get("x-first-death-reason") or "?"),
        deaths=sum(int(d.get("count", 1)) for d in deaths) or 1,
        died_at=died_at if isinstance(died_at, datetime) else None,
        writes=_writes_in(message),
        replayed=int(headers.get(REPLAY_COUNT_HEADER) or 0),
    )


def _task_body(message: amqp.Message) -> Any:
    """The decoded Celery body ``(args, kwargs, embed)``; raises for a foreign or damaged message."""
    register_serializer()
    return loads(
        message.body,
        str(message.properties.get("content_type") or ""),
        str(message.properties.get("content_encoding") or ""),
        accept=settings.CELERY_ACCEPT_CONTENT,
    )


def _writes_in(message: amqp.Message) -> int | None:
    """The number of writes an ``apply_batch`` message carries: args are ``(shard, groups)``."""
    try:
        args, _, _ = _task_body(message)
        return sum(len(group[3]) for group in args[1])
    except Exception:  # a foreign or damaged message: still listed and replayable
        return None


@contextmanager
def _channel() -> Iterator[tuple[Any, int]]:
    with Connection(settings.CELERY_BROKER_URL, transport_options={"confirm_publish": True}) as connection:
        channel: Any = connection.channel()
        dead_letter_queue().bind(channel).declare()
        _, depth, _ = channel.queue_declare(queue=dead_letter_queue_name(), passive=True)
        try:
            yield channel, int(depth)
        finally:
            # Whatever was fetched and not acked goes back to the dead-letter queue.
            channel.close()


def dead_letters_list(*, limit: int | None = None) -> list[DeadLetter]:
    """What the dead-letter queue holds (oldest first), leaving it untouched."""
    found: list[DeadLetter] = []
    with _channel() as (channel, depth):
        for _ in range(depth if limit is None else min(depth, limit)):
            message = channel.basic_get(queue=dead_letter_queue_name(), no_ack=False)
            if message is None:
                break
            found.append(dead_letter_of(message))
    return found


def dead_letters_replay(
    *,
    limit: int | None = None,
    task_ids: set[str] | None = None,
    on_replayed: Callable[[DeadLetter], None] | None = None,
) -> list[DeadLetter]:
    """Publish dead letters back to the queue they died in (confirmed), then remove them from the dead-letter queue.

    Only queues of this deployment (``WRITES_QUEUE_PREFIX``) are replay targets. Messages not chosen, or
    not replayable, stay where they are.
    """
    prefix = settings.WRITES_QUEUE_PREFIX + "."
    replayed: list[DeadLetter] = []
    with _channel() as (channel, depth):
        for _ in range(depth):
            if limit is not None and len(replayed) >= limit:
                break
            message = channel.basic_get(queue=dead_letter_queue_name(), no_ack=False)
            if message is None:
                break
            letter = dead_letter_of(message)
            if task_ids is not None and letter.task_id not in task_ids:
                continue
            if not letter.queue.startswith(prefix) or letter.queue == dead_letter_queue_name():
                logger.warning("dead letter %s: %r is no queue of this deployment", letter.task_id, letter.queue)
                continue
            try:
                channel.basic_publish(
                    _replay_message(message, letter), exchange="", routing_key=letter.queue, confirm_timeout=10
                )
            except Exception as exc:
                raise ReplayError(f"{letter.task_id} could not be put back on {letter.queue}: {exc!r}") from exc
            channel.basic_ack(message.delivery_tag)
            replayed.append(letter)
            if on_replayed is not None:
                on_replayed(letter)
    return replayed


def _replay_message(message: amqp.Message, letter: DeadLetter) -> amqp.Message:
    properties = dict(message.properties)
    headers = {
        key: value
        for key, value in (properties.pop("application_headers", None) or {}).items()
        if not key.startswith(_BROKER_HEADERS)
    }
    headers[REPLAY_COUNT_HEADER] = letter.replayed + 1
    properties["delivery_mode"] = 2
    return amqp.Message(message.body, application_headers=headers, **properties)


@dataclass(frozen=True, slots=True)
class GroupsRemoved:
    """What ``dead_letters_remove_groups`` took out of the dead-letter queue (or would, in a dry run)."""

    writes: int = 0
    messages_dropped: int = 0  # every group of the message was removed: the message is gone
    messages_rewritten: int = 0  # put back into the dead-letter queue with its other groups


def dead_letters_remove_groups(remove: Callable[[Sequence[Any]], bool], *, dry_run: bool = False) -> GroupsRemoved:
    """Take the groups for which ``remove(group)`` is true out of every dead letter.

    A message left with no group is dropped; one with groups left is published again to the dead-letter
    queue (confirmed) with its headers and properties as they were (``x-death`` still names the queue it
    died in, so it replays as before), then the original is removed. A crash between the two leaves both:
    run it again, and replaying the repeat is harmless (ids are applied at most once). Messages this
    function cannot read, and those with nothing to remove, stay where they are.
    """
    writes = dropped = rewritten = 0
    with _channel() as (channel, depth):
        # Only the messages there at the start: copies published meanwhile queue up behind them.
        for _ in range(depth):
            message = channel.basic_get(queue=dead_letter_queue_name(), no_ack=False)
            if message is None:
                break
            try:
                (shard, groups, *rest), kwargs, embed = _task_body(message)
                removed = [group for group in groups if remove(group)]
            except Exception:  # not an apply_batch message: nothing of ours to take out
                removed = []
            if not removed:
                continue
            writes += sum(len(group[3]) for group in removed)
            kept = [group for group in groups if not remove(group)]
            if dry_run:
                dropped, rewritten = (dropped + 1, rewritten) if not kept else (dropped, rewritten + 1)
                continue
            if kept:
                try:
                    channel.basic_publish(
                        _rewritten_message(message, ((shard, kept, *rest), kwargs, embed)),
                        exchange="",
                        routing_key=dead_letter_queue_name(),
                        confirm_timeout=10,
                    )
                except Exception as exc:
                    raise ReplayError(f"a dead letter could not be rewritten: {exc!r}") from exc
                rewritten += 1
            else:
                dropped += 1
            channel.basic_ack(message.delivery_tag)
    return GroupsRemoved(writes=writes, messages_dropped=dropped, messages_rewritten=rewritten)


def _rewritten_message(message: amqp.Message, body: Any) -> amqp.Message:
    """``message`` with another body, encoded as the original was; headers and properties unchanged."""
    properties = dict(message.properties)
    content_type = str(properties.get("content_type") or "")
    serializer = serialization.registry.type_to_name[content_type]  # type: ignore[attr-defined]  # not in the stubs
    _, _, data = dumps(body, serializer=serializer)
    properties["delivery_mode"] = 2
    return amqp.Message(data, **properties)
