"""Request-scoped concerns: the tenant context (gone when the request ends) and request metrics."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from writes.metrics import HTTP_REQUESTS
from writes.routing import current_tenant


class TenantContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = current_tenant.set(None)
        try:
            return self.get_response(request)
        finally:
            current_tenant.reset(token)


# A made-up method must not make a new series: labels come from known, bounded sets only.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware:
    """Counts every answer by endpoint, method and status.

    The endpoint is the URL's name, never the raw path: ids in paths would make one series per write.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        match = request.resolver_match
        endpoint = (match.view_name or "unnamed") if match is not None else "unmatched"
        method = request.method if request.method in KNOWN_METHODS else "other"
        HTTP_REQUESTS.labels(endpoint, method, str(response.status_code)).inc()
        return response
