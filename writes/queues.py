"""Queue topology of the write path: one bounded quorum queue per shard, and their dead-letter queue.

The API's publisher and the workers both declare queues from here, so their arguments always agree
(RabbitMQ refuses a redeclaration with different arguments). Queue arguments hold only what never
changes; the tunable bounds (length, bytes, delivery limit) live in a RabbitMQ policy
(``shard_queue_policy``, applied by ``writes.queue_policies``), so changing a setting changes the live queue.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from django.conf import settings
from kombu import Exchange, Queue
from kombu.serialization import register

# Batches travel as msgpack: far smaller and faster to encode and decode than JSON for 10,000 rows.
MSGPACK_CONTENT_TYPE = "application/x-writes-msgpack"
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def _encode(value: Any) -> Any:
    return _encoder.encode(value)


def _decode(data: Any) -> Any:
    return _decoder.decode(data)


def register_serializer() -> None:
    register(
        MSGPACK_CONTENT_TYPE,
        _encode,
        _decode,
        content_type=MSGPACK_CONTENT_TYPE,
        content_encoding="binary",
    )


def queue_name(alias: str) -> str:
    return f"{settings.WRITES_QUEUE_PREFIX}.{alias}"


def dead_letter_queue_name() -> str:
    return f"{settings.WRITES_QUEUE_PREFIX}.dead_letter"


def maintenance_queue_name() -> str:
    return f"{settings.WRITES_QUEUE_PREFIX}.maintenance"


def exchange() -> Exchange:
    """The direct exchange every write-path queue is bound to, by its own name."""
    return Exchange(settings.WRITES_QUEUE_PREFIX, type="direct", durable=True)


def quorum_arguments() -> dict[str, Any]:
    """What every write-path queue is: a quorum queue, with ``WRITES_QUEUE_REPLICAS`` replicas if set."""
    arguments: dict[str, Any] = {"x-queue-type": "quorum"}
    if settings.WRITES_QUEUE_REPLICAS > 0:
        arguments["x-quorum-initial-group-size"] = settings.WRITES_QUEUE_REPLICAS
    return arguments


def shard_queue(alias: str) -> Queue:
    """The write queue of one physical shard."""
    return Queue(
        queue_name(alias),
        exchange=exchange(),
        routing_key=queue_name(alias),
        durable=True,
        queue_arguments=shard_queue_arguments(),
    )


def shard_queue_arguments() -> dict[str, Any]:
    """What a shard queue is declared with: only what must never change. No tunable belongs here: a
    queue argument cannot change once the queue exists, and for the bounds the lower of argument and
    policy wins, so a bound given here could never be raised."""
    return {
        **quorum_arguments(),
        # A full queue nacks the publish (the API answers 503) instead of dropping its oldest message.
        "x-overflow": "reject-publish",
        # A message that keeps killing its worker, or that a task rejects for good, is parked in the
        # dead-letter queue; at-least-once: the broker keeps it until the dead-letter queue confirmed it
        # (the default, at-most-once, drops it when that queue is missing or refuses it).
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue_name(),
        "x-dead-letter-strategy": "at-least-once",
    }


def shard_queue_policy_name() -> str:
    return f"{settings.WRITES_QUEUE_PREFIX}.shard-bounds"


def shard_queue_policy_pattern() -> str:
    """Every shard queue of this prefix (also those ``add_shard`` creates later), nothing else: the hold
    queues of a move stay unbounded, the dead-letter and maintenance queues too."""
    return "^" + re.escape(settings.WRITES_QUEUE_PREFIX) + r"\.shard_[0-9]+$"


def shard_queue_policy() -> dict[str, Any]:
    """The tunables of every shard queue, carried by a policy (a change applies to the live queue)."""
    return {
        "max-length": settings.WRITES_QUEUE_MAX_LENGTH,
        "max-length-bytes": settings.WRITES_QUEUE_MAX_BYTES,
        "delivery-limit": settings.WRITES_QUEUE_DELIVERY_LIMIT,
        # The same as the arguments (the policy's overflow would win over the argument): stated here too so
        # that the policy alone shows the queue's whole behaviour, and at-least-once keeps its precondition.
        "overflow": "reject-publish",
    }


def dead_letter_queue() -> Queue:
    return Queue(
        dead_letter_queue_name(),
        exchange=exchange(),
        routing_key=dead_letter_queue_name(),
        durable=True,
        queue_arguments=quorum_arguments(),
    )


def maintenance_queue() -> Queue:
    """Projector, repair and other housekeeping tasks: never behind the writes they follow."""
    return Queue(
        maintenance_queue_name(),
        exchange=exchange(),
        routing_key=maintenance_queue_name(),
        durable=True,
        queue_arguments=quorum_arguments(),
    )


def hold_queue_name(logical_shard: int) -> str:
    return f"{settings.WRITES_QUEUE_PREFIX}.hold.logical_{logical_shard}"


def hold_queue(logical_shard: int) -> Queue:
    """Where writes for a logical shard wait while ``move_logical_shard`` switches it to another shard.

    Unbounded on purpose: a write already confirmed to its client must never be refused here.
    """
    return Queue(
        hold_queue_name(logical_shard),
        exchange=exchange(),
        routing_key=hold_queue_name(logical_shard),
        durable=True,
        queue_arguments=quorum_arguments(),
    )


def all_queues() -> list[Queue]:
    return [*(shard_queue(alias) for alias in settings.SHARD_ALIASES), maintenance_queue()]
