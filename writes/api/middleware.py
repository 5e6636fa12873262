"""Request-scoped tenant context: whatever authentication sets is gone when the request ends."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

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
