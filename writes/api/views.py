"""HTTP surface of the write path: thin views that parse, call one service and answer."""

from __future__ import annotations

import time
import uuid
from typing import Any, TypeVar

import msgspec
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from rest_framework import status
from rest_framework.decorators import api_view, authentication_classes, permission_classes, throttle_classes
from rest_framework.exceptions import NotFound, UnsupportedMediaType, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from writes.api import openapi
from writes.api.auth import TenantPrincipal
from writes.api.errors import PayloadTooLarge, error_body
from writes.intake import Accepted, RowBuilder, event_rows
from writes.intake import accept_writes as accept
from writes.metrics import exposition
from writes.models import RejectedWrite, WriteLog
from writes.operations import OperationsCollector
from writes.readiness import broker_reachable
from writes.schemas import EventIn

T = TypeVar("T", bound=msgspec.Struct)


def read_json_body(request: Request, *, max_bytes: int) -> bytes:
    """The raw body of a JSON request, with 413/415 answered before anything is parsed."""
    content_type = request.content_type.split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType(content_type or "none", detail="Send the body as application/json.")
    length = request.META.get("CONTENT_LENGTH") or "0"
    if length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"The body is larger than {max_bytes} bytes.")
    try:
        body = request.body
    except RequestDataTooBig as exc:
        raise PayloadTooLarge(f"The body is larger than {max_bytes} bytes.") from exc
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"The body is larger than {max_bytes} bytes.")
    return body


def accepted_response(accepted: Accepted) -> Response:
    response = Response({"accepted": len(accepted.ids), "ids": accepted.ids}, status=status.HTTP_202_ACCEPTED)
    if not accepted.is_batch:
        response["Location"] = f"/api/v1/writes/{accepted.ids[0]}"
    return response


def tenant_of(request: Request) -> Any:
    principal = request.user
    assert isinstance(principal, TenantPrincipal)
    return principal.context


def accept_request(request: Request, *, kind: str, item_type: type[T], build_rows: RowBuilder[T]) -> Response:
    """A write endpoint's whole job: read the JSON body, accept it for the key's tenant, answer 202."""
    body = read_json_body(request, max_bytes=settings.WRITES_MAX_BODY_BYTES)
    accepted = accept(tenant=tenant_of(request), kind=kind, body=body, item_type=item_type, build_rows=build_rows)
    return accepted_response(accepted)


class EventsView(APIView):
    @extend_schema(
        operation_id="events_create",
        summary="Record analytics events",
        description='One event, or `{"batch": [...]}` of 1 to 10,000. Answered once RabbitMQ confirmed.',
        request=openapi.request_of("EventIn"),
        responses=openapi.WRITE_RESPONSES,
    )
    def post(self, request: Request) -> Response:
        return accept_request(request, kind="event", item_type=EventIn, build_rows=event_rows)


class WriteStatusView(APIView):
    @extend_schema(
        operation_id="writes_status",
        summary="Status of one write",
        parameters=[
            OpenApiParameter(
                "wait",
                {"type": "number", "minimum": 0, "maximum": 30},
                description="Wait up to this many seconds (≤ 30) while pending.",
            ),
        ],
        responses={200: openapi.response_of("WriteStatus"), **openapi.ERROR_RESPONSES},
    )
    def get(self, request: Request, write_id: str) -> Response:
        try:
            parsed_id = uuid.UUID(write_id)
        except ValueError as exc:
            raise NotFound("No write with this id.") from exc
        wait = _wait_seconds(request.query_params.get("wait"))
        tenant = tenant_of(request)
        deadline = time.monotonic() + wait
        while True:
            found = write_status(tenant_id=tenant.tenant_id, write_id=parsed_id)
            if found["status"] != "pending" or time.monotonic() >= deadline:
                return Response(found)
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def _wait_seconds(raw: str | None) -> float:
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValidationError({"wait": "A number of seconds from 0 to 30."}) from exc
    if not 0 <= value <= settings.WRITES_STATUS_MAX_WAIT_SECONDS:
        raise ValidationError({"wait": "A number of seconds from 0 to 30."})
    return value


def write_status(*, tenant_id: uuid.UUID, write_id: uuid.UUID) -> dict[str, Any]:
    """Applied (with position), rejected (with code and reason), or pending: nothing recorded yet."""
    applied = (
        WriteLog.objects.filter(tenant_id=tenant_id, write_id=write_id).values("position", "kind", "applied_at").first()
    )
    if applied is not None:
        return {"id": str(write_id), "status": "applied", **applied}
    rejected = (
        RejectedWrite.objects.filter(tenant_id=tenant_id, write_id=write_id)
        .values("kind", "code", "reason", "rejected_at")
        .first()
    )
    if rejected is not None:
        return {"id": str(write_id), "status": "rejected", **rejected}
    return {"id": str(write_id), "status": "pending"}


# Health checks are DRF views so that they are in the OpenAPI schema (and fuzzed with the rest); they
# need no key and are never throttled.


@extend_schema(
    operation_id="healthz",
    summary="Liveness: the process answers",
    auth=[],
    responses={200: openapi.response_of("Health")},
)
@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
@throttle_classes([])
def healthz(request: Request) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@extend_schema(
    operation_id="readyz",
    summary="Readiness: the databases and the broker answer",
    auth=[],
    responses={
        200: openapi.response_of("Readiness"),
        503: OpenApiResponse(response=openapi.ref("Error"), description="A dependency is unavailable."),
    },
)
@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
@throttle_classes([])
def readyz(request: Request) -> JsonResponse:
    checks: dict[str, str] = {}
    for alias in ["default", *settings.SHARD_ALIASES]:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
            checks[alias] = "ok"
        except Exception as exc:  # any failure means not ready; say which
            checks[alias] = f"unavailable: {exc.__class__.__name__}"
            connections[alias].close()
    checks["broker"] = "ok" if broker_reachable() else "unavailable"
    ready = all(value == "ok" for value in checks.values())
    if ready:
        return JsonResponse({"status": "ready", "checks": checks})
    body = error_body("not_ready", "A dependency is unavailable.", [checks])
    return JsonResponse(body, status=503, headers={"Retry-After": "5"})


# Queue depth, apply rate, time to drain and projection lag are the system's, not a process's: they are
# computed when scraped, once per scrape, beside the merged per-process metrics.
_system_registry = CollectorRegistry(auto_describe=False)
_system_registry.register(OperationsCollector())


def metrics(request: HttpRequest) -> HttpResponse:
    body = exposition() + generate_latest(_system_registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
