"""Every error the API answers, as ``{"error": {"code", "message", "details"}}``, mapped in one place.

``error_answer`` maps an exception to (status, body, headers) for both halves of the API: the edge's
hot routes and Django's views (through DRF's ``exception_handler``). On a write endpoint an error
after ids were assigned also carries them (``error.ids``): a retry with those ids is always harmless.
"""

from __future__ import annotations

import math
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from writes.errors import AccountConflict, PublishError
from writes.metrics import HTTP_REFUSED
from writes.schemas import BodyNotJson, ValidationFailed

PUBLISH_RETRY_AFTER_SECONDS = 1
WAITS_RETRY_AFTER_SECONDS = 1


def error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


class MalformedGzip(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "malformed_gzip"
    default_detail = "The body is not valid gzip."


class TooManyWaits(exceptions.APIException):
    """A tenant holds as many long-polls in this process as it may."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "too_many_waits"
    default_detail = "Too many concurrent waits for this tenant."
    wait = float(WAITS_RETRY_AFTER_SECONDS)


class TooManyMembers(exceptions.APIException):
    """Adding these members would take a conversation past ``CHAT_MAX_MEMBERS``."""

    status_code = status.HTTP_409_CONFLICT
    default_code = "too_many_members"
    default_detail = "A conversation has at most this many members."


class ServedByEdge(exceptions.APIException):
    """A hot route reached Django: the API runs without its ASGI edge (``config.asgi``)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "served_by_edge"
    default_detail = "This route is served by the API's ASGI edge; run the API with `manage.py serve_api`."


Answer = tuple[int, dict[str, Any], dict[str, str]]


def error_answer(exc: Exception) -> Answer | None:
    """(status, body, headers) for an error a client can cause or a dependency can fail with;
    ``None`` for anything else (a bug: logged, answered 500)."""
    if isinstance(exc, ValidationFailed):
        return 400, error_body("invalid", exc.message, [d.as_dict() for d in exc.details]), {}
    if isinstance(exc, AccountConflict):
        return 409, error_body("conflict", str(exc)), {}
    if isinstance(exc, BodyNotJson):
        return 400, error_body("malformed_json", f"The body is not valid JSON: {exc}"), {}
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    if isinstance(exc, PublishError):
        HTTP_REFUSED.labels("503", exc.code).inc()
        return (
            503,
            error_body(exc.code, f"{exc} Retry later."),
            {"Retry-After": str(PUBLISH_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if not isinstance(exc, exceptions.APIException):
        return None
    headers: dict[str, str] = {}
    wait = getattr(exc, "wait", None)
    if isinstance(exc, exceptions.Throttled | TooManyWaits):
        HTTP_REFUSED.labels("429", _code_for(exc)).inc()
        if wait is not None:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = str(auth_header)
    message, details = _message_and_details(exc.detail)
    return exc.status_code, error_body(_code_for(exc), message, details), headers


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's exception handler: the same answers as the edge's."""
    answer = error_answer(exc)
    if answer is None:
        return None  # a bug: let Django log it and answer 500
    status_code, body, headers = answer
    return Response(body, status=status_code, headers=headers)


def _code_for(exc: exceptions.APIException) -> str:
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        return "unauthorized"
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else str(exc.default_code)


def _message_and_details(detail: Any) -> tuple[str, list[Any]]:
    if isinstance(detail, list):
        return "Invalid request.", [str(d) for d in detail]
    if isinstance(detail, dict):
        return "Invalid request.", [{"field": k, "message": str(v)} for k, v in detail.items()]
    return str(detail), []


def json_bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """Django's own 400s (a Host not in ALLOWED_HOSTS, a malformed request) in the API's error shape."""
    return JsonResponse(error_body("bad_request", "Bad request."), status=400)


def json_forbidden(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("forbidden", "Forbidden."), status=403)


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("server_error", "Internal error; it has been logged."), status=500)
