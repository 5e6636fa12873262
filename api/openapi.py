"""OpenAPI pieces generated from the msgspec structs that validate the wire format.

One source of truth: the schema documents exactly what ``writes.schemas`` accepts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse

from writes.schemas import MAX_NESTING, AccountIn, EventIn, MembersIn, MessageIn, ReadIn, TransferIn

REF = "#/components/schemas/{name}"


class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    details: list[Any]


class Error(msgspec.Struct):
    error: ErrorDetail


class WritesAccepted(msgspec.Struct):
    accepted: int
    ids: list[str]


class WriteConflict(msgspec.Struct):
    """A later write that reused an applied write's id with other content, and was rejected for it."""

    kind: str
    code: Literal["exists_with_different_fields"]
    reason: str
    rejected_at: datetime


class WriteStatus(msgspec.Struct):
    id: str
    status: Literal["pending", "applied", "rejected"]
    kind: str | None = None
    position: int | None = None
    applied_at: datetime | None = None
    code: str | None = None
    reason: str | None = None
    rejected_at: datetime | None = None
    #: Only on an applied write whose id a later write reused with other content.
    conflict: WriteConflict | None = None


class AsOf(msgspec.Struct):
    #: The log position the read model has read up to (its checkpoint on the tenant's shard).
    position: int
    #: When the write at that position was applied; null before the first one.
    time: datetime | None


class ConversationOut(msgspec.Struct):
    conversation_id: str
    message_count: int
    member_count: int
    last_message_at: datetime | None
    last_sender_id: str
    preview: str
    as_of: AsOf
    lag_seconds: float
    #: True when ``min_position`` was not reached within the wait: the answer is what there was.
    timed_out: bool = False


class MessageOut(msgspec.Struct):
    id: str
    seq: int
    sender_id: str
    body: str
    sent_at: datetime
    position: int


class MessagePage(msgspec.Struct):
    conversation_id: str
    messages: list[MessageOut]
    next_after: int
    has_more: bool
    as_of: AsOf
    lag_seconds: float
    #: True when ``min_position`` was not reached within the wait: the answer is what there was.
    timed_out: bool = False


class InboxEntry(msgspec.Struct):
    conversation_id: str
    unread_count: int
    last_read_seq: int
    last_message_at: datetime | None
    message_count: int
    last_sender_id: str
    preview: str


class InboxOut(msgspec.Struct):
    user_id: str
    conversations: list[InboxEntry]
    as_of: AsOf
    lag_seconds: float
    #: True when ``min_position`` was not reached within the wait: the answer is what there was.
    timed_out: bool = False


class AccountOut(msgspec.Struct):
    id: str
    currency: str
    no_overdraft: bool
    created_at: datetime
    balance: int
    consistency: Literal["strong", "eventual"]
    as_of: AsOf
    lag_seconds: float
    #: True when ``min_position`` was not reached within the wait: the answer is what there was.
    timed_out: bool = False
    transfer_count: int | None = None


class EventBucket(msgspec.Struct):
    name: str
    #: Start of the UTC hour or day.
    start: datetime
    count: int


class EventStats(msgspec.Struct):
    interval: Literal["hour", "day"]
    start: datetime
    end: datetime
    name: str | None
    #: Non-empty buckets only, by start then name; a missing bucket counted zero events.
    buckets: list[EventBucket]
    #: More buckets than ``limit``: ask again with ``after=next_after``.
    has_more: bool
    next_after: str | None
    as_of: AsOf
    #: How long ago the oldest write not yet counted was applied; 0 when fully caught up.
    lag_seconds: float
    #: The ``min_position`` asked for, if any.
    min_position: int | None
    #: True when ``min_position`` was not reached within ``wait``: the answer is what there was.
    timed_out: bool


class Health(msgspec.Struct):
    status: Literal["ok"]


class Readiness(msgspec.Struct):
    status: Literal["ready"]
    checks: dict[str, str]


DOCUMENTED: list[type[msgspec.Struct]] = [
    EventIn,
    Error,
    WritesAccepted,
    WriteStatus,
    MessageIn,
    MembersIn,
    ReadIn,
    TransferIn,
    AccountIn,
    ConversationOut,
    MessagePage,
    InboxOut,
    AccountOut,
    EventStats,
    Health,
    Readiness,
]


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def response_of(name: str) -> dict[str, str]:
    return ref(name)


def request_of(item: str, *, max_items: int = 10_000) -> dict[str, Any]:
    """A JSON body of one item, or ``{"batch": [...]}`` of them. drf-spectacular takes a raw schema only
    under a media type; a bare schema dict would be read as a map of media types."""
    return {
        "application/json": {
            "oneOf": [
                ref(item),
                {
                    "type": "object",
                    "properties": {
                        "batch": {"type": "array", "items": ref(item), "minItems": 1, "maxItems": max_items}
                    },
                    "required": ["batch"],
                    "additionalProperties": False,
                },
            ]
        }
    }


def request_one(item: str) -> dict[str, Any]:
    """A JSON body of exactly one item."""
    return {"application/json": ref(item)}


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ref("Error"), description=description)


ERROR_RESPONSES: dict[int, OpenApiResponse] = {
    400: _error("Invalid request; `details` lists every bad item by index and field."),
    401: _error("Missing, unknown or revoked API key."),
    404: _error("Not found (or not this tenant's)."),
    429: _error("Rate limited; see Retry-After."),
}
BODY_RESPONSES: dict[int, OpenApiResponse] = {
    413: _error("Body too large."),
    415: _error("Body is not application/json."),
}
WRITE_RESPONSES: dict[int, Any] = {
    202: OpenApiResponse(response=ref("WritesAccepted"), description="Durable in RabbitMQ; will be applied."),
    **ERROR_RESPONSES,
    **BODY_RESPONSES,
    503: _error("Broker unavailable or queue full; see Retry-After."),
}


MIN_POSITION = OpenApiParameter(
    "min_position",
    {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    description="Wait (up to 30 s) until the read model has passed this log position (a write's `position`); "
    "`timed_out` says if it had not.",
)


# Free-form JSON objects (event properties) as documented. msgspec spells the nesting limit out as
# ten levels of unrolled unions (over 200 KB of schema that clients and fuzzers choke on); the limit is
# stated in words instead, and integers keep their 64-bit range.
JSON_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": f"Free-form JSON object, nested at most {MAX_NESTING} levels deep; integers must fit "
    "a signed 64-bit integer; no NUL characters.",
    "additionalProperties": True,
}
FREE_FORM_FIELDS: dict[str, list[str]] = {"EventIn": ["properties"], "TransferIn": ["metadata"]}


def add_msgspec_components(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular post-processing hook: add the msgspec structs as components."""
    _, components = msgspec.json.schema_components(DOCUMENTED, ref_template=REF)
    for struct, fields in FREE_FORM_FIELDS.items():
        for name in fields:
            components[struct]["properties"][name] = {"anyOf": [JSON_OBJECT_SCHEMA, {"type": "null"}]}
    result.setdefault("components", {}).setdefault("schemas", {}).update(components)
    return result


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "api.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer"}
