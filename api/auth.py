"""API-key authentication: ``Authorization: Bearer <key>`` identifies the tenant and its shard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from api.keys import cached_tenant_for_api_key
from writes.routing import TenantContext, current_tenant

if TYPE_CHECKING:
    from rest_framework.views import APIView


@dataclass(frozen=True, slots=True)
class TenantPrincipal:
    """``request.user`` for API calls: the tenant, not a Django user."""

    context: TenantContext
    is_authenticated: bool = True


class ApiKeyAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[TenantPrincipal, TenantContext] | None:
        header = get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != self.keyword or len(header) != 2:
            raise AuthenticationFailed("Use 'Authorization: Bearer <api key>'.")
        try:
            secret = header[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("Invalid API key.") from exc
        context = cached_tenant_for_api_key(secret)
        if context is None:
            raise AuthenticationFailed("Invalid or revoked API key.")
        # Reset by TenantContextMiddleware when the request ends.
        current_tenant.set(context)
        return TenantPrincipal(context), context

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class IsTenant(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.user, TenantPrincipal)
