"""The ``writes.apply_batch`` task message: what the API publishes (``api.edge.publisher``, many
requests coalesced into one message per shard) and what a worker forwards when a logical shard moved.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from kombu import Queue

from writes.queues import (
    MSGPACK_CONTENT_TYPE,
    register_serializer,
)

logger = logging.getLogger(__name__)

APPLY_TASK = "writes.apply_batch"

# One group is what one request wrote: [tenant_id, kind, received_at, [[write_id, key, payload, occurred_at], ...]]
WriteGroup = list[Any]


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
