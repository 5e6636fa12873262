"""Health, readiness and metrics, and the two helpers every Django view of the API shares."""

from __future__ import annotations

import threading
import time
from typing import Any, TypeVar

import msgspec
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from rest_framework.decorators import api_view, authentication_classes, permission_classes, throttle_classes
from rest_framework.exceptions import UnsupportedMediaType
from rest_framework.permissions import AllowAny
from rest_framework.request import Request

from api import openapi
from api.auth import TenantPrincipal
from api.errors import PayloadTooLarge, error_body
from writes.metrics import exposition
from writes.operations import OperationsCollector
from writes.readiness import broker_reachable

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


def tenant_of(request: Request) -> Any:
    principal = request.user
    assert isinstance(principal, TenantPrincipal)
    return principal.context


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
    checks, ready = readiness_verdict()
    if ready:
        return JsonResponse({"status": "ready", "checks": checks})
    body = error_body("not_ready", "A dependency is unavailable.", [checks])
    return JsonResponse(body, status=503, headers={"Retry-After": "5"})


# The verdict is shared for ``READYZ_CACHE_SECONDS`` per process: each check opens a broker connection
# and queries every database, so probes (or anyone, /readyz needs no key) must not multiply that work.
# The lock makes concurrent probes wait for one check instead of each running their own.
_verdict_lock = threading.Lock()
_verdict: tuple[float, dict[str, str], bool] | None = None


def readiness_verdict() -> tuple[dict[str, str], bool]:
    global _verdict
    with _verdict_lock:
        now = time.monotonic()
        if _verdict is not None and now - _verdict[0] < settings.READYZ_CACHE_SECONDS:
            return dict(_verdict[1]), _verdict[2]
        checks, ready = _check_readiness()
        _verdict = (time.monotonic(), checks, ready)
        return dict(checks), ready


def _check_readiness() -> tuple[dict[str, str], bool]:
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
    return checks, all(value == "ok" for value in checks.values())


# Queue depth, apply rate, time to drain and projection lag are the system's, not a process's: they are
# computed when scraped, once per scrape, beside the merged per-process metrics.
_system_registry = CollectorRegistry(auto_describe=False)
_system_registry.register(OperationsCollector())


def metrics(request: HttpRequest) -> HttpResponse:
    body = exposition() + generate_latest(_system_registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
