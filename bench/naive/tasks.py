"""The queued baseline's task: one message and one ORM insert per event, as Celery is often used."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from bench.naive.models import NaiveEvent

NAIVE_TASK = "bench.naive_insert_event"


def naive_queue_name() -> str:
    return f"{settings.WRITES_QUEUE_PREFIX}.naive"


@shared_task(name=NAIVE_TASK, acks_late=True, ignore_result=True)
def naive_insert_event(shard: str, tenant_id: str, received_at: str, fields: dict[str, Any]) -> None:
    NaiveEvent._default_manager.using(shard).create(tenant_id=tenant_id, received_at=received_at, **fields)
