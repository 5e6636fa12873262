"""Accept → route: everything the API does to a write before it is published.

The body is parsed and validated in one pass (``writes.schemas.parse_writes``); ``prepare_writes``
turns the items into log rows grouped for the tenant's shard, all or nothing. The API's edge then
hands the group to its coalescing publisher and answers once the broker confirmed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from writes.ids import uuid7_many
from writes.metrics import ACCEPT_SECONDS, WRITES_ACCEPTED
from writes.partitions import ID_AHEAD_MS
from writes.publisher import WriteGroup
from writes.routing import TenantContext
from writes.schemas import (
    ISO_4217,
    MAX_MESSAGE_BODY_BYTES,
    MAX_PROPERTIES_BYTES,
    EventIn,
    EventPayload,
    FieldError,
    MembersIn,
    MembersPayload,
    MessageIn,
    MessagePayload,
    ParsedBody,
    ReadIn,
    ReadPayload,
    TransferIn,
    TransferPayload,
    ValidationFailed,
    check_timestamp,
)

T = TypeVar("T", bound=msgspec.Struct)

# A log row as it travels to the worker: [write_id, key, payload (JSON text), occurred_at (ISO 8601)].
Row = list[str]
RowBuilder = Callable[[Sequence[T], datetime, bool], tuple[list[Row], list[FieldError]]]

_json = msgspec.json.Encoder()
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreparedWrites:
    """A request's writes, valid and ready to publish: one message group and the ids it holds."""

    group: WriteGroup
    ids: list[str]
    is_batch: bool


def prepare_writes(
    *,
    tenant: TenantContext,
    kind: str,
    parsed: ParsedBody[T],
    build_rows: RowBuilder[T],
) -> PreparedWrites:
    """Turn a parsed body into log rows for ``tenant``; ``ValidationFailed`` lists every bad item."""
    received_at = datetime.now(UTC)
    rows, errors = build_rows(parsed.items, received_at, parsed.is_batch)
    errors.extend(future_id_errors(parsed.items, received_at, parsed.is_batch))
    if errors:
        raise ValidationFailed(f"{len(errors)} invalid item(s); nothing was accepted.", errors)
    group: WriteGroup = [str(tenant.tenant_id), kind, received_at.isoformat(), rows]
    return PreparedWrites(group=group, ids=[row[0] for row in rows], is_batch=parsed.is_batch)


def record_accepted(*, tenant: TenantContext, kind: str, ids: list[str], seconds: float) -> None:
    """Metrics (and, at DEBUG, a trace line) for writes the broker confirmed."""
    ACCEPT_SECONDS.labels(kind).observe(seconds)
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


def future_id_errors(items: Sequence[Any], received_at: datetime, is_batch: bool) -> list[FieldError]:
    """Client ids that are UUIDv7s from more than a day ahead: the log's partitions go by an id's time
    (``writes.partitions``), and a clock that far off is the client's bug."""
    limit = int(received_at.timestamp() * 1000) + ID_AHEAD_MS
    return [
        FieldError(
            index if is_batch else None,
            "id",
            "This UUIDv7 id's time is more than a day in the future; check the clock that made it.",
        )
        for index, item in enumerate(items)
        if (write_id := getattr(item, "id", None)) is not None and write_id.version == 7 and write_id.int >> 80 > limit
    ]


def write_ids(items: Sequence[Any]) -> list[str]:
    """Each item's id: the client's, or a server UUIDv7. Server ids are made for the whole request at
    once: one at a time was a tenth of the API's time on 1,000-event requests."""
    server = iter(uuid7_many(sum(1 for item in items if item.id is None)))
    return [str(item.id) if item.id is not None else next(server) for item in items]


def occurred_at(value: datetime | None, received_at: datetime, received: str) -> tuple[str, str | None]:
    """When the write happened (the client's time, else the receipt time), or what is wrong with the
    client's time."""
    if value is None:
        return received, None
    problem = check_timestamp(value, received_at)
    return (received, problem) if problem else (value.isoformat(), None)


def event_rows(items: Sequence[EventIn], received_at: datetime, is_batch: bool) -> tuple[list[Row], list[FieldError]]:
    rows: list[Row] = []
    errors: list[FieldError] = []
    received = received_at.isoformat()
    for index, (item, write_id) in enumerate(zip(items, write_ids(items), strict=True)):
        position = index if is_batch else None
        occurred, problem = occurred_at(item.timestamp, received_at, received)
        if problem:
            errors.append(FieldError(position, "timestamp", problem))
            continue
        # One encode per event. The payload holds the properties, so when it is within the limit the
        # properties are too; only a payload over the limit needs the properties measured alone.
        payload = _json.encode(EventPayload(distinct_id=item.distinct_id, properties=item.properties))
        if len(payload) > MAX_PROPERTIES_BYTES and len(_json.encode(item.properties)) > MAX_PROPERTIES_BYTES:
            errors.append(FieldError(position, "properties", f"Larger than {MAX_PROPERTIES_BYTES} bytes once encoded."))
            continue
        rows.append([write_id, item.name, payload.decode(), occurred])
    return rows, errors


def message_rows_for(conversation_id: str) -> RowBuilder[MessageIn]:
    """Row builder for messages to one conversation (the log's ``key``)."""

    def message_rows(
        items: Sequence[MessageIn], received_at: datetime, is_batch: bool
    ) -> tuple[list[Row], list[FieldError]]:
        rows: list[Row] = []
        errors: list[FieldError] = []
        received = received_at.isoformat()
        for index, (item, write_id) in enumerate(zip(items, write_ids(items), strict=True)):
            position = index if is_batch else None
            if len(item.body.encode()) > MAX_MESSAGE_BODY_BYTES:
                errors.append(FieldError(position, "body", f"Larger than {MAX_MESSAGE_BODY_BYTES} bytes of UTF-8."))
                continue
            occurred, problem = occurred_at(item.sent_at, received_at, received)
            if problem:
                errors.append(FieldError(position, "sent_at", problem))
                continue
            payload = _json.encode(MessagePayload(sender_id=item.sender_id, body=item.body)).decode()
            rows.append([write_id, conversation_id, payload, occurred])
        return rows, errors

    return message_rows


def members_rows_for(conversation_id: str) -> RowBuilder[MembersIn]:
    def members_rows(
        items: Sequence[MembersIn], received_at: datetime, is_batch: bool
    ) -> tuple[list[Row], list[FieldError]]:
        received = received_at.isoformat()
        rows = [
            [
                write_id,
                conversation_id,
                # Repeats in one request are one member; order is kept for a predictable log.
                _json.encode(MembersPayload(user_ids=list(dict.fromkeys(item.user_ids)))).decode(),
                received,
            ]
            for item, write_id in zip(items, write_ids(items), strict=True)
        ]
        return rows, []

    return members_rows


def read_rows_for(conversation_id: str) -> RowBuilder[ReadIn]:
    def read_rows(items: Sequence[ReadIn], received_at: datetime, is_batch: bool) -> tuple[list[Row], list[FieldError]]:
        received = received_at.isoformat()
        rows = [
            [
                write_id,
                conversation_id,
                _json.encode(ReadPayload(user_id=item.user_id, up_to=item.up_to)).decode(),
                received,
            ]
            for item, write_id in zip(items, write_ids(items), strict=True)
        ]
        return rows, []

    return read_rows


# The tenant's accounts among some ids, for the intake check of transfers.
ACCOUNTS_SQL = (
    "SELECT account_id, currency, no_overdraft FROM ledger_accounts WHERE tenant_id = %s AND account_id = ANY(%s)"
)


def transfer_account_ids(items: Sequence[TransferIn]) -> set[str]:
    return {i.debit_account for i in items} | {i.credit_account for i in items}


def transfer_rows_checked_by(known: dict[str, tuple[str, bool]] | None) -> RowBuilder[TransferIn]:
    """Row builder for transfers. ``known`` holds the tenant's accounts among those the transfers name
    (id → (currency, no_overdraft)), or is ``None`` when they could not be read: the applier checks
    again in any case."""

    def transfer_rows(
        items: Sequence[TransferIn], received_at: datetime, is_batch: bool
    ) -> tuple[list[Row], list[FieldError]]:
        rows: list[Row] = []
        errors: list[FieldError] = []
        received = received_at.isoformat()
        for index, item in enumerate(items):
            position = index if is_batch else None
            problems = transfer_problems(item, known)
            if problems:
                errors.extend(FieldError(position, name, message) for name, message in problems)
                continue
            metadata = None
            if item.metadata is not None:
                encoded = _json.encode(item.metadata)
                if len(encoded) > MAX_PROPERTIES_BYTES:
                    errors.append(
                        FieldError(position, "metadata", f"Larger than {MAX_PROPERTIES_BYTES} bytes once encoded.")
                    )
                    continue
                metadata = msgspec.Raw(encoded)
            payload = TransferPayload(
                debit_account=item.debit_account,
                credit_account=item.credit_account,
                amount=item.amount,
                currency=item.currency,
                metadata=metadata,
            )
            transfer_id = str(item.id)
            rows.append([transfer_id, transfer_id, _json.encode(payload).decode(), received])
        return rows, errors

    return transfer_rows


def transfer_problems(item: TransferIn, known: dict[str, tuple[str, bool]] | None) -> list[tuple[str, str]]:
    """Every reason ``item`` cannot be applied, as (field, message); ``known`` as in
    ``transfer_rows_checked_by`` (``None``: account checks skipped)."""
    problems: list[tuple[str, str]] = []
    if item.currency not in ISO_4217:
        problems.append(("currency", f"{item.currency!r} is not an ISO 4217 currency code."))
    if item.debit_account == item.credit_account:
        problems.append(("credit_account", "The debit and credit accounts must differ."))
    if known is None:
        return problems
    for field_name in ("debit_account", "credit_account"):
        account_id = getattr(item, field_name)
        found = known.get(account_id)
        if found is None:
            problems.append((field_name, f"No account {account_id!r}."))
        elif found[0] != item.currency:
            problems.append((field_name, f"Account {account_id!r} holds {found[0]}, not {item.currency}."))
    return problems
