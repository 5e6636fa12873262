"""Accept → route → publish: the API's whole job for a write.

``accept_writes`` parses and validates a body in one pass, turns the items into log rows, and hands
them to the coalescing publisher for the tenant's shard. It returns once the broker has confirmed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from django.conf import settings

from writes.ids import uuid7
from writes.metrics import ACCEPT_SECONDS, WRITES_ACCEPTED
from writes.publisher import get_publisher
from writes.routing import TenantContext
from writes.schemas import (
    MAX_PROPERTIES_BYTES,
    EventIn,
    EventPayload,
    FieldError,
    ValidationFailed,
    check_timestamp,
    parse_writes,
)

T = TypeVar("T", bound=msgspec.Struct)

# A log row as it travels to the worker: [write_id, key, payload (JSON text), occurred_at (ISO 8601)].
Row = list[str]
RowBuilder = Callable[[Sequence[T], datetime, bool], tuple[list[Row], list[FieldError]]]

_json = msgspec.json.Encoder()
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Accepted:
    ids: list[str]
    is_batch: bool


def accept_writes(
    *,
    tenant: TenantContext,
    kind: str,
    body: bytes,
    item_type: type[T],
    build_rows: RowBuilder[T],
) -> Accepted:
    started = time.perf_counter()
    parsed = parse_writes(body, item_type, max_items=settings.WRITES_MAX_BATCH_ITEMS)
    received_at = datetime.now(UTC)
    rows, errors = build_rows(parsed.items, received_at, parsed.is_batch)
    if errors:
        raise ValidationFailed(f"{len(errors)} invalid item(s); nothing was accepted.", errors)
    group: list[Any] = [str(tenant.tenant_id), kind, received_at.isoformat(), rows]
    get_publisher().publish(tenant.shard, group)
    ids = [row[0] for row in rows]
    ACCEPT_SECONDS.labels(kind).observe(time.perf_counter() - started)
    WRITES_ACCEPTED.labels(kind).inc(len(ids))
    # DEBUG: one line per request is too much for production volumes, but it is how one traces an id.
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "accepted %d %s write(s)",
            len(ids),
            kind,
            extra={
                "tenant": str(tenant.tenant_id),
                "shard": tenant.shard,
                "batch_size": len(ids),
                "write_ids": ids[:20],
            },
        )
    return Accepted(ids=ids, is_batch=parsed.is_batch)


def event_rows(items: Sequence[EventIn], received_at: datetime, is_batch: bool) -> tuple[list[Row], list[FieldError]]:
    rows: list[Row] = []
    errors: list[FieldError] = []
    received = received_at.isoformat()
    for index, item in enumerate(items):
        position = index if is_batch else None
        occurred = received
        if item.timestamp is not None:
            problem = check_timestamp(item.timestamp, received_at)
            if problem:
                errors.append(FieldError(position, "timestamp", problem))
                continue
            occurred = item.timestamp.isoformat()
        properties = None
        if item.properties is not None:
            encoded = _json.encode(item.properties)
            if len(encoded) > MAX_PROPERTIES_BYTES:
                errors.append(
                    FieldError(position, "properties", f"Larger than {MAX_PROPERTIES_BYTES} bytes once encoded.")
                )
                continue
            properties = msgspec.Raw(encoded)
        payload = _json.encode(EventPayload(distinct_id=item.distinct_id, properties=properties)).decode()
        write_id = str(item.id) if item.id is not None else uuid7()
        rows.append([write_id, item.name, payload, occurred])
    return rows, errors
