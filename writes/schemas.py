"""Wire format of incoming writes, validated in one pass with msgspec.

``parse_writes`` turns a request body into validated items, or a ``ValidationFailed`` listing every bad
item by index and field. All-or-nothing: one bad item fails the whole request.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

import msgspec
from msgspec import Meta

MAX_NESTING = 10
MAX_PROPERTIES_BYTES = 32 * 1024
MAX_ID_LENGTH = 200
EARLIEST_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP_AHEAD = timedelta(days=1)

Name = Annotated[str, Meta(min_length=1, max_length=200)]
ShortId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Timestamp = Annotated[datetime, Meta(tz=True)]
# Ids that also appear in URL paths (users, accounts) cannot hold "/".
PathId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH, pattern="^[^/]+$")]


# Integers in free-form JSON must fit a signed 64-bit integer: what PostgreSQL's bigint, Java's long and
# most consumers hold. Bigger numbers are sent as strings (or floats, knowingly).
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]


def _nested_json_type(depth: int) -> Any:
    """JSON values nested at most ``depth`` containers deep, checked by msgspec in C."""
    scalar: Any = str | Int64 | float | bool | None
    value: Any = scalar
    for _ in range(depth):
        value = scalar | list[value] | dict[str, value]
    return value


if TYPE_CHECKING:
    Properties = dict[str, Any]
else:
    # "properties" is itself the first level, so its values may nest MAX_NESTING - 1 further.
    Properties = dict[str, _nested_json_type(MAX_NESTING - 1)]


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    id: uuid.UUID | None = None
    distinct_id: ShortId | None = None
    timestamp: Timestamp | None = None
    properties: Properties | None = None


class EventPayload(msgspec.Struct, omit_defaults=True):
    """What the log keeps of an event besides its id, name and time (encoded in one pass)."""

    distinct_id: str | None = None
    properties: dict[str, Any] | None = None


# --- Chat ---------------------------------------------------------------------------------
# A message body is at most 16 KiB of UTF-8; msgspec bounds the characters, the row builder the bytes.
MAX_MESSAGE_BODY_BYTES = 16 * 1024
MAX_MEMBERS_PER_WRITE = 1_000
MAX_SEQ = 2**63 - 1

MessageBody = Annotated[str, Meta(min_length=1, max_length=MAX_MESSAGE_BODY_BYTES)]


class MessageIn(msgspec.Struct, forbid_unknown_fields=True):
    sender_id: PathId
    body: MessageBody
    id: uuid.UUID | None = None
    sent_at: Timestamp | None = None


class MembersIn(msgspec.Struct, forbid_unknown_fields=True):
    user_ids: Annotated[list[PathId], Meta(min_length=1, max_length=MAX_MEMBERS_PER_WRITE)]
    id: uuid.UUID | None = None


class ReadIn(msgspec.Struct, forbid_unknown_fields=True):
    """``up_to`` is the ``seq`` of the last message read (as listed by ``GET …/messages``)."""

    user_id: PathId
    up_to: Annotated[int, Meta(ge=0, le=MAX_SEQ)]
    id: uuid.UUID | None = None


class MessagePayload(msgspec.Struct):
    sender_id: str
    body: str


class MembersPayload(msgspec.Struct):
    user_ids: list[str]


class ReadPayload(msgspec.Struct):
    user_id: str
    up_to: int


# --- Ledger -------------------------------------------------------------------------------
MAX_AMOUNT = 2**63 - 1

# Active ISO 4217 codes (funds and precious metals included; XXX "no currency" is not).
_ISO_4217_CODES = """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP BYN
    BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP
    GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW
    KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD
    NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE
    SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED
    VES VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XTS XUA YER ZAR ZMW ZWG
    ZWL"""
ISO_4217 = frozenset(_ISO_4217_CODES.split())

Currency = Annotated[str, Meta(pattern="^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR")]
Amount = Annotated[int, Meta(ge=1, le=MAX_AMOUNT, description="Minor units (cents), a positive integer")]


class TransferIn(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    debit_account: PathId
    credit_account: PathId
    amount: Amount
    currency: Currency
    metadata: Properties | None = None


class TransferPayload(msgspec.Struct, omit_defaults=True):
    """What the log keeps of a transfer; ``key`` is the transfer id."""

    debit_account: str
    credit_account: str
    amount: int
    currency: str
    metadata: msgspec.Raw | None = None


class AccountIn(msgspec.Struct, forbid_unknown_fields=True):
    id: PathId
    currency: Currency
    no_overdraft: bool = False


@dataclass(frozen=True, slots=True)
class FieldError:
    index: int | None
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.index is not None:
            detail = {"index": self.index, **detail}
        return detail


@dataclass
class ValidationFailed(Exception):
    message: str
    details: list[FieldError] = field(default_factory=list)


class BodyNotJson(Exception):
    """The body is not well-formed JSON (or not UTF-8)."""


T = TypeVar("T", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class ParsedBody(Generic[T]):
    items: list[T]
    is_batch: bool


_any_decoder = msgspec.json.Decoder()


def decode_json(body: bytes) -> Any:
    try:
        return _any_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BodyNotJson(str(exc)) from exc
    except RecursionError as exc:
        # Thousands of nested brackets exhaust the decoder's stack: a client error, not a crash.
        raise BodyNotJson("nested too deeply") from exc


# msgspec builds a Struct's validation info on first use and caches it on the class. Two threads doing
# that at once crash the process (SIGSEGV in an API process serving its first concurrent requests,
# reproduced every time by tests/writes/test_schemas_threads.py), so each item type is prepared once,
# under a lock, before any thread converts with it.
_prepared: set[type] = set()
_prepare_lock = threading.Lock()


def prepare_item_type(item_type: type[msgspec.Struct]) -> None:
    if item_type in _prepared:
        return
    with _prepare_lock:
        if item_type not in _prepared:
            msgspec.json.Decoder(list[item_type])  # type: ignore[valid-type]
            msgspec.convert([], list[item_type])  # type: ignore[valid-type]
            _prepared.add(item_type)


# The fast path: a typed decoder validates while it parses, in one C pass with no intermediate dicts
# (a third of the API's time on 1,000-event requests went to decoding into dicts, then converting).
# Anything it refuses goes through the slow path below, which names every problem; so the fast path
# only ever accepts what the slow path accepts.
_BATCH_FIRST = re.compile(rb'\s*\{\s*"batch"\s*:')
_typed: dict[tuple[type, int], tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]] = {}


def _typed_decoders(item_type: type[T], max_items: int) -> tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]:
    """(one item, ``{"batch": [...]}``) decoders for ``item_type``, made once under the prepare lock."""
    found = _typed.get((item_type, max_items))
    if found is not None:
        return found
    with _prepare_lock:
        if (item_type, max_items) not in _typed:
            batch = msgspec.defstruct(
                f"{item_type.__name__}Batch",
                [("batch", Annotated[list[item_type], Meta(min_length=1, max_length=max_items)])],  # type: ignore[valid-type]
                forbid_unknown_fields=True,
            )
            _typed[(item_type, max_items)] = (msgspec.json.Decoder(item_type), msgspec.json.Decoder(batch))
    return _typed[(item_type, max_items)]


def parse_writes(body: bytes, item_type: type[T], *, max_items: int) -> ParsedBody[T]:
    """Decode one item or ``{"batch": [...]}`` and validate every item against ``item_type``."""
    prepare_item_type(item_type)
    if b"\\u0000" not in body:
        one, batch = _typed_decoders(item_type, max_items)
        is_batch = _BATCH_FIRST.match(body) is not None
        try:
            if is_batch:
                return ParsedBody(items=batch.decode(body).batch, is_batch=True)
            return ParsedBody(items=[one.decode(body)], is_batch=False)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            pass  # the slow path says what is wrong
    document = decode_json(body)
    if isinstance(document, dict) and "batch" in document:
        if len(document) != 1:
            extra = sorted(k for k in document if k != "batch")
            raise ValidationFailed(
                "A batch body has only the key 'batch'.", [FieldError(None, extra[0], "Unknown field.")]
            )
        raw_items = document["batch"]
        if not isinstance(raw_items, list):
            raise ValidationFailed("'batch' must be a list.", [FieldError(None, "batch", "Expected an array.")])
        if not 1 <= len(raw_items) <= max_items:
            raise ValidationFailed(
                f"A batch holds 1 to {max_items} items; this one has {len(raw_items)}.",
                [FieldError(None, "batch", f"Expected 1 to {max_items} items, got {len(raw_items)}.")],
            )
        is_batch = True
    elif isinstance(document, dict):
        raw_items = [document]
        is_batch = False
    else:
        raise ValidationFailed(
            'The body must be a JSON object: one write, or {"batch": [...]}.',
            [FieldError(None, "$", f"Expected an object, got {type(document).__name__}.")],
        )
    try:
        items = msgspec.convert(raw_items, list[item_type])  # type: ignore[valid-type]
    except msgspec.ValidationError:
        items = []
    errors = [] if items else _item_errors(raw_items, item_type, is_batch)
    if not errors and b"\\u0000" in body:
        errors = _nul_errors(raw_items, is_batch)
    if errors:
        raise ValidationFailed(f"{len(errors)} invalid item(s); nothing was accepted.", errors)
    return ParsedBody(items=items, is_batch=is_batch)


def _item_errors(raw_items: list[Any], item_type: type[T], is_batch: bool) -> list[FieldError]:
    """The slow path, only for bad requests: validate item by item to name every bad one."""
    errors = []
    for index, raw in enumerate(raw_items):
        try:
            msgspec.convert(raw, item_type)
        except msgspec.ValidationError as exc:
            errors.append(_field_error(index if is_batch else None, raw, str(exc)))
    return errors


def _field_error(index: int | None, raw: Any, message: str) -> FieldError:
    # msgspec says "Expected `str`, got `int` - at `$.name`"; report the path without the "$.".
    message, _, path = message.partition(" - at `")
    path = path.rstrip("`")
    field_name = path[2:] if path.startswith("$.") else (path or "$")
    # msgspec writes "[...]" for a dict key it does not name; the field is what the client needs.
    field_name = field_name.replace("[...]", "") or "$"
    if message.startswith("Object contains unknown field") and "`" in message:
        return FieldError(index, message.split("`")[1], "Unknown field.")
    if message.startswith("Object missing required field") and "`" in message:
        return FieldError(index, message.split("`")[1], "This field is required.")
    properties = raw.get("properties") if isinstance(raw, dict) else None
    if field_name.startswith("properties") and isinstance(properties, dict) and _depth(properties) > MAX_NESTING:
        return FieldError(index, "properties", f"Nested deeper than {MAX_NESTING} levels.")
    return FieldError(index, field_name, message)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


def _nul_errors(raw_items: list[Any], is_batch: bool) -> list[FieldError]:
    errors = []
    for index, raw in enumerate(raw_items):
        for key, value in raw.items():
            if _contains_nul(key) or _contains_nul(value):
                errors.append(
                    FieldError(index if is_batch else None, key, "NUL characters (\\u0000) cannot be stored.")
                )
                break
    return errors


def check_timestamp(value: datetime, now: datetime) -> str | None:
    if value < EARLIEST_TIMESTAMP:
        return "Timestamps before 1970 are not accepted."
    if value > now + LATEST_TIMESTAMP_AHEAD:
        return "Timestamps more than a day in the future are not accepted."
    return None


def parse_one(body: bytes, item_type: type[T]) -> T:
    """Decode and validate a body that holds exactly one object (no ``batch`` form)."""
    document = decode_json(body)
    if isinstance(document, dict) and "batch" in document:
        raise ValidationFailed(
            "Send one object; this endpoint takes no batch.", [FieldError(None, "batch", "Unknown field.")]
        )
    return parse_writes(body, item_type, max_items=1).items[0]


def check_id_text(value: str, field_name: str) -> FieldError | None:
    """Ids that arrive in a URL path get the same limits as ids in a body."""
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        return FieldError(None, field_name, f"Expected 1 to {MAX_ID_LENGTH} characters.")
    if "\x00" in value:
        return FieldError(None, field_name, "NUL characters (\\u0000) cannot be stored.")
    return None
