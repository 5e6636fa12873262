"""Every error the API answers, as ``{"error": {"code", "message", "details"}}``, mapped in one place."""

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


def error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    headers: dict[str, str] = {}
    if isinstance(exc, ValidationFailed):
        return Response(
            error_body("invalid", exc.message, [d.as_dict() for d in exc.details]), status=status.HTTP_400_BAD_REQUEST
        )
    if isinstance(exc, AccountConflict):
        return Response(error_body("conflict", str(exc)), status=status.HTTP_409_CONFLICT)
    if isinstance(exc, BodyNotJson):
        return Response(error_body("malformed_json", f"The body is not valid JSON: {exc}"), status=400)
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    if isinstance(exc, PublishError):
        HTTP_REFUSED.labels("503", exc.code).inc()
        return Response(
            error_body(exc.code, f"{exc} Retry later."),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(PUBLISH_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if not isinstance(exc, exceptions.APIException):
        return None  # a bug: let Django log it and answer 500
    wait = getattr(exc, "wait", None)
    if isinstance(exc, exceptions.Throttled):
        HTTP_REFUSED.labels("429", "throttled").inc()
        if wait is not None:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = str(auth_header)
    code = _code_for(exc)
    message, details = _message_and_details(exc.detail)
    return Response(error_body(code, message, details), status=exc.status_code, headers=headers)


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


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("server_error", "Internal error; it has been logged."), status=500)
