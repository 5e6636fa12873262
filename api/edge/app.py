"""The API's ASGI application: hot routes served by the edge itself, everything else by Django.

Hot routes are the write endpoints and ``GET /api/v1/writes/{id}``: per request they cost a header
scan, a cache probe for the key, one msgspec pass and an await on the publisher, with no thread, no
middleware stack and no database round trip. Every other path (reads, ledger accounts, health,
metrics, schema, docs, admin) goes to Django's ASGI handler, at most ``EDGE_DJANGO_CONCURRENCY``
at a time (each runs in a thread) and at most ``EDGE_DJANGO_PER_TENANT`` of them per tenant. A read
with ``?min_position=`` waits here first, as a future woken by the projector's notification, so
Django answers it without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs

import msgspec
import psycopg
from django.conf import settings
from django.core.asgi import get_asgi_application
from psycopg_pool import PoolTimeout
from rest_framework import exceptions

from api.edge.database import Handler as ChannelHandler
from api.edge.database import Listener, Pools
from api.edge.publisher import EdgePublisher
from api.edge.waits import Positions, TenantWaits, WriteStatuses
from api.errors import MalformedGzip, PayloadTooLarge, TooManyMembers, TooManyWaits, error_answer, error_body
from api.keys import KEYS, is_missing
from api.params import min_position_param, path_id, read_wait_param, status_wait_param, write_id_param
from api.throttling import rate_limit_wait
from readmodels.projections.chat import ChatProjection
from readmodels.projections.events import EventCounts
from readmodels.projections.ledger import LedgerProjection
from readmodels.selectors.chat import MEMBERS_OTHER_THAN_SQL
from writes.errors import PublishError
from writes.fates import ABANDON_SQL
from writes.intake import (
    ACCOUNTS_SQL,
    RowBuilder,
    event_rows,
    members_rows_for,
    message_rows_for,
    prepare_writes,
    read_rows_for,
    record_accepted,
    transfer_account_ids,
    transfer_rows_checked_by,
)
from writes.ledger import TRANSFER_KIND
from writes.metrics import HTTP_REQUESTS
from writes.notifications import API_KEYS_CHANGED_CHANNEL, PROJECTION_ADVANCED_CHANNEL, WRITES_APPLIED_CHANNEL
from writes.routing import TenantContext
from writes.schemas import EventIn, MembersIn, MessageIn, ReadIn, TransferIn, parse_writes
from writes.services import TENANT_FOR_KEY_SQL, hash_api_key, looks_like_api_key, tenant_from_key_row

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=msgspec.Struct)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]

_json = msgspec.json.Encoder()
_JSON_HEADERS = [(b"content-type", b"application/json")]
_AUTH_CHALLENGE = 'Bearer realm="api"'


class Unavailable(exceptions.APIException):
    """A database the edge needs did not answer."""

    status_code = 503
    default_code = "unavailable"
    default_detail = "A database is unavailable; retry later."
    wait = 1.0


@dataclass(frozen=True, slots=True)
class Request:
    scope: Scope
    receive: Receive
    match: re.Match[str]
    headers: dict[bytes, bytes]

    def query(self, name: str) -> str | None:
        values = parse_qs(self.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).get(name)
        return values[-1] if values else None


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[["Edge", Request, TenantContext], Awaitable[Answer]]


class Edge:
    """One per process: the publisher, the listener, the waiters and the limits the hot routes share."""

    def __init__(self) -> None:
        aliases = ["default", *settings.SHARD_ALIASES]
        self.pools = Pools(aliases, max_size=settings.EDGE_DATABASE_POOL_SIZE, timeout=5.0)
        self.statuses = WriteStatuses(self.pools)
        self.positions = Positions(self.pools)
        self.waits = TenantWaits(settings.EDGE_MAX_WAITS_PER_TENANT)
        self.publisher = EdgePublisher(
            broker_url=settings.CELERY_BROKER_URL,
            linger_seconds=settings.WRITES_PUBLISH_LINGER_SECONDS,
            max_writes=settings.WRITES_PUBLISH_MAX_WRITES,
            max_bytes=settings.WRITES_PUBLISH_MAX_BYTES,
            timeout_seconds=settings.WRITES_PUBLISH_TIMEOUT_SECONDS,
            max_in_flight=settings.WRITES_PUBLISH_MAX_IN_FLIGHT,
            abandon=self._abandon,
        )
        shard_channels: dict[str, ChannelHandler] = {
            WRITES_APPLIED_CHANNEL: self.statuses.recheck,
            PROJECTION_ADVANCED_CHANNEL: self.positions.on_notification,
        }
        self.listener = Listener(
            {
                "default": {API_KEYS_CHANGED_CHANNEL: lambda alias, payload: KEYS.clear()},
                **dict.fromkeys(settings.SHARD_ALIASES, shard_channels),
            },
            on_connect=self._on_listening,
            on_disconnect=self._on_not_listening,
        )
        self.django_slots = asyncio.Semaphore(settings.EDGE_DJANGO_CONCURRENCY)
        self.django_per_tenant = TenantWaits(settings.EDGE_DJANGO_PER_TENANT, what="requests to Django's routes")

    async def start(self) -> None:
        self.listener.start()
        await self.listener.wait_listening(timeout=3.0)

    async def close(self) -> None:
        await self.listener.close()
        await self.publisher.close()
        await self.pools.close()

    def _on_listening(self, alias: str) -> None:
        if alias == "default":
            KEYS.set_listening(True)
        else:
            self.statuses.recheck(alias)
            self.positions.recheck(alias)

    def _on_not_listening(self, alias: str) -> None:
        if alias == "default":
            KEYS.set_listening(False)
        else:
            self.positions.forget(alias)

    async def _abandon(self, shard: str, message_id: str) -> bool:
        return bool(await self.fetch(shard, ABANDON_SQL, [message_id]))

    async def fetch(self, alias: str, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        try:
            return await self.pools.fetch(alias, sql, params)
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            raise Unavailable(f"The database {alias} is unavailable; retry later.") from exc

    # --- authentication -------------------------------------------------------------------------

    async def tenant_for(self, header: bytes | None) -> TenantContext:
        """The tenant of ``Authorization: Bearer <key>``, from the cache when it can."""
        if not header:
            raise _unauthorized(exceptions.NotAuthenticated())
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != b"bearer":
            raise _unauthorized(exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api key>'."))
        try:
            secret = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise _unauthorized(exceptions.AuthenticationFailed("Invalid API key.")) from None
        tenant = await self._tenant_for_secret(secret)
        if tenant is None:
            raise _unauthorized(exceptions.AuthenticationFailed("Invalid or revoked API key."))
        return tenant

    async def _tenant_for_secret(self, secret: str) -> TenantContext | None:
        if not looks_like_api_key(secret):
            return None
        digest = hash_api_key(secret)
        cached = KEYS.get(digest)
        if not is_missing(cached):
            return cached  # type: ignore[return-value]
        generation = KEYS.generation()
        rows = await self.fetch("default", TENANT_FOR_KEY_SQL, [digest])
        tenant = tenant_from_key_row(rows[0] if rows else None, digest)
        KEYS.put(digest, tenant, generation)
        return tenant

    async def tenant_or_none(self, header: bytes | None) -> TenantContext | None:
        """The tenant of a working key, else ``None`` (Django's view then answers as it does)."""
        try:
            return await self.tenant_for(header)
        except exceptions.APIException:
            return None


def _unauthorized(exc: exceptions.APIException) -> exceptions.APIException:
    exc.auth_header = _AUTH_CHALLENGE  # type: ignore[attr-defined]
    return exc


# --- hot routes ---------------------------------------------------------------------------------


async def _read_body(request: Request) -> bytes:
    """The JSON body, with 415 and 413 answered before anything is parsed. A gzip body
    (``Content-Encoding: gzip``) is inflated here; the size limit applies to what it inflates to."""
    content_type = request.headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if content_type != b"application/json":
        shown = content_type.decode("latin-1") or "none"
        raise exceptions.UnsupportedMediaType(shown, detail="Send the body as application/json.")
    encoding = request.headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding not in {b"identity", b"gzip"}:
        raise exceptions.UnsupportedMediaType(
            encoding.decode("latin-1"), detail="Content-Encoding must be gzip or absent."
        )
    limit = settings.WRITES_MAX_BODY_BYTES
    declared = request.headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
    inflater = zlib.decompressobj(wbits=31) if encoding == b"gzip" else None
    chunks: list[bytes] = []
    size = received = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
        if inflater is not None:
            chunk = _inflate(inflater, chunk, limit - size)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            if inflater is not None and not inflater.eof:
                raise MalformedGzip("The gzip body is truncated.")
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _inflate(inflater: Any, chunk: bytes, room: int) -> bytes:
    """Inflate at most ``room`` + 1 bytes: a body that inflates past the limit (a decompression bomb)
    is refused after that much work, not after inflating all of it."""
    try:
        inflated = inflater.decompress(chunk, room + 1)
    except zlib.error as exc:
        raise MalformedGzip(f"The body is not valid gzip ({exc}).") from exc
    if inflater.unconsumed_tail:
        raise PayloadTooLarge(f"The body inflates to more than {settings.WRITES_MAX_BODY_BYTES} bytes.")
    return bytes(inflated)


class _ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer."""


async def _accept(
    edge: Edge,
    request: Request,
    tenant: TenantContext,
    *,
    kind: str,
    item_type: type[T],
    build_rows: RowBuilder[T] | Callable[[Any], Awaitable[RowBuilder[T]]],
) -> Answer:
    started = time.perf_counter()
    body = await _read_body(request)
    parsed = parse_writes(body, item_type, max_items=settings.WRITES_MAX_BATCH_ITEMS)
    rows_for = await build_rows(parsed.items) if asyncio.iscoroutinefunction(build_rows) else build_rows
    prepared = prepare_writes(tenant=tenant, kind=kind, parsed=parsed, build_rows=rows_for)  # type: ignore[arg-type]
    try:
        await edge.publisher.publish(tenant.shard, prepared.group, nbytes=len(body))
    except PublishError as exc:
        return _error(exc, ids=prepared.ids)
    record_accepted(tenant=tenant, kind=kind, ids=prepared.ids, seconds=time.perf_counter() - started)
    headers: tuple[tuple[str, str], ...] = ()
    if not prepared.is_batch:
        headers = (("location", f"/api/v1/writes/{prepared.ids[0]}"),)
    return Answer(202, {"accepted": len(prepared.ids), "ids": prepared.ids}, headers)


async def events(edge: Edge, request: Request, tenant: TenantContext) -> Answer:
    return await _accept(edge, request, tenant, kind="event", item_type=EventIn, build_rows=event_rows)


def _conversation(builder: Callable[[str], RowBuilder[T]], kind: str, item_type: type[T]) -> Handler:
    async def handle(edge: Edge, request: Request, tenant: TenantContext) -> Answer:
        conversation_id = path_id(request.match.group(1), "conversation_id")
        return await _accept(edge, request, tenant, kind=kind, item_type=item_type, build_rows=builder(conversation_id))

    return handle


async def members(edge: Edge, request: Request, tenant: TenantContext) -> Answer:
    conversation_id = path_id(request.match.group(1), "conversation_id")
    limit = settings.CHAT_MAX_MEMBERS

    async def capped_rows(items: list[MembersIn]) -> RowBuilder[MembersIn]:
        adding = {user_id for item in items for user_id in item.user_ids}
        others = 0
        if len(adding) <= limit:
            try:
                rows = await edge.pools.fetch(
                    tenant.shard, MEMBERS_OTHER_THAN_SQL, [tenant.tenant_id, conversation_id, sorted(adding)]
                )
                others = int(rows[0][0])
            except (psycopg.Error, PoolTimeout, OSError):
                logger.warning("shard %s: member cap check skipped at intake", tenant.shard, exc_info=True)
        if others + len(adding) > limit:  # the projection holds the cap in any case
            raise TooManyMembers(
                f"A conversation has at most {limit} members; it has {others} and this adds {len(adding)}."
            )
        return members_rows_for(conversation_id)

    return await _accept(edge, request, tenant, kind="member", item_type=MembersIn, build_rows=capped_rows)


async def transfers(edge: Edge, request: Request, tenant: TenantContext) -> Answer:
    async def checked_rows(items: list[TransferIn]) -> RowBuilder[TransferIn]:
        try:
            rows = await edge.pools.fetch(
                tenant.shard, ACCOUNTS_SQL, [tenant.tenant_id, sorted(transfer_account_ids(items))]
            )
            known: dict[str, tuple[str, bool]] | None = {row[0]: (row[1], row[2]) for row in rows}
        except (psycopg.Error, PoolTimeout, OSError):
            logger.warning("shard %s: account check skipped at intake", tenant.shard, exc_info=True)
            known = None  # the applier checks again
        return transfer_rows_checked_by(known)

    return await _accept(edge, request, tenant, kind=TRANSFER_KIND, item_type=TransferIn, build_rows=checked_rows)


async def write_status(edge: Edge, request: Request, tenant: TenantContext) -> Answer:
    write_id = write_id_param(request.match.group(1))
    if write_id is None:
        raise exceptions.NotFound("No write with this id.")
    wait = status_wait_param(request.query("wait"))
    key = (tenant.tenant_id, write_id)
    if wait <= 0:
        return Answer(200, await _status(edge, tenant, key, wait=0.0))
    edge.waits.acquire(tenant.tenant_id)
    try:
        return Answer(200, await _status(edge, tenant, key, wait=wait))
    finally:
        edge.waits.release(tenant.tenant_id)


async def _status(edge: Edge, tenant: TenantContext, key: tuple[uuid.UUID, uuid.UUID], *, wait: float) -> Any:
    try:
        return await edge.statuses.status(tenant.shard, key, wait=wait)
    except (psycopg.Error, PoolTimeout, OSError) as exc:
        raise Unavailable(f"The shard {tenant.shard} is unavailable; retry later.") from exc


# (path pattern, method, endpoint name for metrics, handler)
HOT_ROUTES: list[tuple[re.Pattern[str], str, str, Handler]] = [
    (re.compile(r"/api/v1/events"), "POST", "events", events),
    (
        re.compile(r"/api/v1/conversations/([^/]+)/messages"),
        "POST",
        "conversation-messages",
        _conversation(message_rows_for, "message", MessageIn),
    ),
    (
        re.compile(r"/api/v1/conversations/([^/]+)/members"),
        "POST",
        "conversation-members",
        members,
    ),
    (
        re.compile(r"/api/v1/conversations/([^/]+)/read"),
        "POST",
        "conversation-read",
        _conversation(read_rows_for, "read", ReadIn),
    ),
    (re.compile(r"/api/v1/ledger/transfers"), "POST", "ledger-transfers", transfers),
    (re.compile(r"/api/v1/writes/([^/]+)"), "GET", "write-status", write_status),
    (re.compile(r"/api/v1/writes/([^/]+)"), "HEAD", "write-status", write_status),  # the server drops the body
]

# Reads that Django answers, and the projection their ``min_position`` waits for.
READ_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"/api/v1/stats/events"), EventCounts.name),
    (re.compile(r"/api/v1/conversations/[^/]+"), ChatProjection.name),
    (re.compile(r"/api/v1/conversations/[^/]+/messages"), ChatProjection.name),
    (re.compile(r"/api/v1/users/[^/]+/inbox"), ChatProjection.name),
    (re.compile(r"/api/v1/ledger/accounts/[^/]+"), LedgerProjection.name),
]


def _error(exc: Exception, *, ids: list[str] | None = None) -> Answer:
    answer = error_answer(exc)
    if answer is None:
        logger.exception("unexpected error on a hot route", exc_info=exc)
        return Answer(500, error_body("server_error", "Internal error; it has been logged."))
    status, body, headers = answer
    if ids is not None:
        body["error"]["ids"] = ids
    return Answer(status, body, tuple(headers.items()))


async def _send(send: Send, answer: Answer) -> None:
    body = _json.encode(answer.body)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    headers.extend((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Application:
    """The ASGI callable (``config.asgi.application``)."""

    def __init__(self) -> None:
        self.django = get_asgi_application()
        self.edge: Edge | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._edge()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.edge is not None:
                    await self.edge.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _edge(self) -> Edge:
        if self.edge is None:
            self.edge = Edge()
            await self.edge.start()
        return self.edge

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        edge = await self._edge()
        path: str = scope["path"]
        method: str = scope["method"]
        headers = dict(scope["headers"])
        if path.startswith("/api/v1/"):
            for pattern, route_method, endpoint, handler in HOT_ROUTES:
                match = pattern.fullmatch(path)
                if match is not None and method == route_method:
                    await self._hot(edge, Request(scope, receive, match, headers), send, endpoint, handler)
                    return
        await self._django(edge, scope, receive, send, headers)

    async def _hot(self, edge: Edge, request: Request, send: Send, endpoint: str, handler: Handler) -> None:
        try:
            tenant = await edge.tenant_for(request.headers.get(b"authorization"))
            wait = rate_limit_wait(tenant.tenant_id)
            if wait:
                raise exceptions.Throttled(wait)
            answer = await handler(edge, request, tenant)
        except _ClientGone:
            return
        except Exception as exc:
            answer = _error(exc)
        HTTP_REQUESTS.labels(endpoint, request.scope["method"], str(answer.status)).inc()
        await _send(send, answer)

    async def _django(
        self, edge: Edge, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> None:
        """Django's turn, bounded: a thread each, so a tenant gets at most a few at once."""
        tenant = await edge.tenant_or_none(headers.get(b"authorization")) if scope["path"].startswith("/api/") else None
        if tenant is None:
            async with edge.django_slots:
                await self.django(scope, receive, send)
            return
        try:
            edge.django_per_tenant.acquire(tenant.tenant_id)
        except TooManyWaits as exc:
            await _send(send, _error(exc))
            return
        try:
            if scope["method"] == "GET":
                await self._wait_for_position(edge, scope, tenant)
            async with edge.django_slots:
                await self.django(scope, receive, send)
        except TooManyWaits as exc:
            await _send(send, _error(exc))
        finally:
            edge.django_per_tenant.release(tenant.tenant_id)

    async def _wait_for_position(self, edge: Edge, scope: Scope, tenant: TenantContext) -> None:
        """``?min_position=`` on a read: wait here, as a future, so that Django need not. Bad values are
        left for Django's view to refuse with the full list of problems."""
        path = scope["path"]
        projection = next((name for pattern, name in READ_ROUTES if pattern.fullmatch(path)), None)
        if projection is None or b"min_position" not in scope.get("query_string", b""):
            return
        query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        try:
            position = min_position_param((query.get("min_position") or [None])[-1])
            wait = read_wait_param((query.get("wait") or [None])[-1])
        except exceptions.ValidationError:
            return
        if position is None or wait <= 0:
            return
        edge.waits.acquire(tenant.tenant_id)
        try:
            await edge.positions.reached(tenant.shard, projection, position, timeout=wait)
        except (psycopg.Error, PoolTimeout, OSError):
            return  # Django reads what there is, and says so
        finally:
            edge.waits.release(tenant.tenant_id)
