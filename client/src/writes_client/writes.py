"""The writes a client sends, encoded once at capture: id, payload bytes, and where they go.

A write is turned into its JSON bytes when it is captured, with its id inside. Retries resend these
bytes, so a retry cannot carry another id than the first attempt did.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from writes_client.ids import new_write_id

# The API refuses bodies over 5 MiB (after inflating) and batches over 10,000 items.
API_MAX_BODY_BYTES = 5 * 1024 * 1024
API_MAX_BATCH_ITEMS = 10_000
# ``\u0000`` as JSON writes NUL: an odd number of backslashes before ``u0000``.
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# Room for the batch envelope: a write alone must fit into a body with it.
MAX_WRITE_BYTES = API_MAX_BODY_BYTES - 64


class InvalidWrite(ValueError):
    """A write that can never be accepted (not JSON-encodable, NUL in a string, too large, bad id)."""


@dataclass(frozen=True, slots=True)
class Destination:
    """Where writes are posted. Writes of an ordered destination (a conversation, transfers) are sent
    one batch at a time, in the order they were captured. The API applies a batch in its order; two
    batches may still be applied in either order (two workers), so a write that must follow another
    (a spend after its funding) waits for it first: ``wait_applied``."""

    path: str
    ordered: bool


EVENTS = Destination("/api/v1/events", ordered=False)
TRANSFERS = Destination("/api/v1/ledger/transfers", ordered=True)


def messages_of(conversation_id: str) -> Destination:
    return Destination(f"/api/v1/conversations/{quote(conversation_id, safe='')}/messages", ordered=True)


@dataclass(slots=True)
class Item:
    id: str
    data: bytes  # the write as JSON, id included
    destination: Destination
    captured_at: float  # time.monotonic() at capture
    seq: int = 0  # capture order within one client, set by the buffer


def event_write(
    *,
    name: str,
    distinct_id: str | None,
    properties: dict[str, Any] | None,
    timestamp: datetime | str | None,
    write_id: str | uuid.UUID | None,
) -> Item:
    write: dict[str, Any] = {"id": _id(write_id), "name": name, "timestamp": _time(timestamp)}
    if distinct_id is not None:
        write["distinct_id"] = distinct_id
    if properties is not None:
        write["properties"] = properties
    return _item(write, EVENTS)


def message_write(
    *,
    conversation_id: str,
    sender_id: str,
    body: str,
    sent_at: datetime | str | None,
    write_id: str | uuid.UUID | None,
) -> Item:
    if not conversation_id or "/" in conversation_id:
        # The API matches the decoded path: a quoted slash would still split it.
        raise InvalidWrite("conversation_id must be 1 to 200 characters without '/'")
    write = {"id": _id(write_id), "sender_id": sender_id, "body": body, "sent_at": _time(sent_at)}
    return _item(write, messages_of(conversation_id))


def transfer_write(
    *,
    debit_account: str,
    credit_account: str,
    amount: int,
    currency: str,
    metadata: dict[str, Any] | None,
    write_id: str | uuid.UUID | None,
) -> Item:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidWrite("amount must be an integer number of minor units")
    write: dict[str, Any] = {
        "id": _id(write_id),
        "debit_account": debit_account,
        "credit_account": credit_account,
        "amount": amount,
        "currency": currency,
    }
    if metadata is not None:
        write["metadata"] = metadata
    return _item(write, TRANSFERS)


def raw_write(write: dict[str, Any], destination: Destination) -> Item:
    """A write given as the API's JSON object (the command line's lines); an id is added if it has none."""
    write = dict(write)
    write["id"] = _id(write.get("id"))
    return _item(write, destination)


def _item(write: dict[str, Any], destination: Destination) -> Item:
    return Item(id=write["id"], data=encode(write), destination=destination, captured_at=time.monotonic())


def encode(write: dict[str, Any]) -> bytes:
    try:
        data = json.dumps(write, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise InvalidWrite(f"the write is not JSON the API accepts: {exc}") from exc
    if b"\\u0000" in data and _NUL.search(data):
        raise InvalidWrite("a string contains NUL (\\u0000), which the API refuses")
    if len(data) > MAX_WRITE_BYTES:
        raise InvalidWrite(f"the write is {len(data)} bytes encoded; the API takes at most {MAX_WRITE_BYTES}")
    return data


def _id(write_id: object) -> str:
    if write_id is None:
        return new_write_id()
    if isinstance(write_id, uuid.UUID):
        return str(write_id)
    if isinstance(write_id, str):
        try:
            return str(uuid.UUID(write_id))
        except ValueError:
            pass
    raise InvalidWrite(f"a write id must be a UUID, not {write_id!r}")


def _time(value: datetime | str | None) -> str:
    """The moment of capture unless given: a write delayed by retries keeps the time it happened.
    A naive datetime is taken as UTC."""
    if value is None:
        return datetime.now(UTC).isoformat()
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return value
