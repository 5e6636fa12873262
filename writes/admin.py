"""Django admin: tenants, API keys (a new key is shown once), the shard map, tenant erasures (read-only),
each shard's write log and rejected writes (read-only, one shard at a time), and the operations page
(queues, rates, lag)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

from writes.models import ApiKey, LedgerAccount, RejectedWrite, ShardMap, Tenant, TenantErasure, WriteLog
from writes.operations import overview, overview_as_dict
from writes.services import api_key_issue, api_key_revoke, tenant_create


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin[Tenant]):
    list_display = ["name", "id", "logical_shard", "shard", "created_at"]
    search_fields = ["name", "id"]
    readonly_fields = ["id", "logical_shard", "shard", "created_at"]
    fields = ["name", "id", "logical_shard", "shard", "created_at"]

    @admin.display(description="physical shard")
    def shard(self, tenant: Tenant) -> str:
        entry = ShardMap.objects.filter(logical_shard=tenant.logical_shard).first()
        return entry.alias if entry else "—"

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = tenant_create(name=obj.name)
        obj.pk, obj.logical_shard, obj.created_at = created.pk, created.logical_shard, created.created_at

    def has_delete_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        return False  # a tenant's writes live on its shard; deleting the row would orphan them


# Where save_model leaves a new key's secret for response_add: on the request object only.
ISSUED_SECRET_ATTRIBUTE = "_writes_issued_api_key"  # noqa: S105 - an attribute name, not a secret


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    list_display = ["prefix", "tenant", "label", "created_at", "revoked_at"]
    list_filter = ["tenant"]
    fields = ["tenant", "label", "prefix", "created_at", "revoked_at"]
    readonly_fields = ["prefix", "created_at", "revoked_at"]
    actions = ["revoke"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return [*self.readonly_fields, "tenant"] if obj else list(self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = api_key_issue(tenant=obj.tenant, label=obj.label)
        obj.pk, obj.prefix, obj.created_at = issued.api_key.pk, issued.api_key.prefix, issued.api_key.created_at
        # Shown on the answer to this very request (response_add), never through django.contrib.messages:
        # its default storage is a cookie, which would carry the secret back and forth in the clear.
        setattr(request, ISSUED_SECRET_ATTRIBUTE, issued.secret)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        secret = getattr(request, ISSUED_SECRET_ATTRIBUTE, None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "New API key",
            "opts": self.opts,
            "api_key": obj,
            "secret": secret,
        }
        response = TemplateResponse(request, "admin/writes/apikey_issued.html", context)
        response["Cache-Control"] = "no-store"  # neither the browser nor a proxy keeps a copy
        return response

    @admin.action(description="Revoke selected keys (takes effect at once)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        messages.success(request, f"Revoked {queryset.count()} key(s).")

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False  # revoke instead: the record of who had access stays


@admin.register(ShardMap)
class ShardMapAdmin(admin.ModelAdmin[ShardMap]):
    list_display = ["logical_shard", "alias"]
    list_filter = ["alias"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ShardMap | None = None) -> bool:
        return False  # changing an entry without moving the data would hide it

    def has_delete_permission(self, request: HttpRequest, obj: ShardMap | None = None) -> bool:
        return False


@admin.register(TenantErasure)
class TenantErasureAdmin(admin.ModelAdmin[TenantErasure]):
    """What each erasure deleted, and when: made by ``erase_tenant`` and ``clean_moved_shards`` only."""

    list_display = ["tenant_id", "scope", "requested_at", "completed_at"]
    list_filter = ["scope"]
    search_fields = ["tenant_id"]
    fields = ["tenant_id", "scope", "requested_at", "completed_at", "counts"]
    readonly_fields = ["tenant_id", "scope", "requested_at", "completed_at", "counts"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TenantErasure | None = None) -> bool:
        return False  # the record of an erasure is evidence: nobody edits it

    def has_delete_permission(self, request: HttpRequest, obj: TenantErasure | None = None) -> bool:
        return False


def chosen_shard(request: HttpRequest) -> str:
    """The shard picked with the "shard" filter, also from the change page (kept in _changelist_filters)."""
    shard = request.GET.get("shard")
    if shard is None and "_changelist_filters" in request.GET:
        shard = parse_qs(request.GET["_changelist_filters"]).get("shard", [None])[0]
    return shard if shard in settings.SHARD_ALIASES else settings.SHARD_ALIASES[0]


class ShardFilter(admin.SimpleListFilter):
    title = "shard"
    parameter_name = "shard"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(alias, alias) for alias in settings.SHARD_ALIASES]

    def choices(self, changelist: Any) -> Any:
        current = self.value() or settings.SHARD_ALIASES[0]
        for alias, title in self.lookup_choices:
            yield {
                "selected": current == alias,
                "query_string": changelist.get_query_string({self.parameter_name: alias}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.using(chosen_shard(request))


class TenantFilter(admin.SimpleListFilter):
    title = "tenant"
    parameter_name = "tenant"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(t.id), t.name) for t in Tenant.objects.all()[:200]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(tenant_id=self.value()) if self.value() else queryset


class KindFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(kind, kind) for kind in ("event", "message", "member", "read", "transfer")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(kind=self.value()) if self.value() else queryset


class ShardResidentAdmin(admin.ModelAdmin[Any]):
    """Read-only admin over one shard at a time, chosen with the "shard" filter."""

    list_filter = [ShardFilter, TenantFilter, KindFilter]
    show_full_result_count = False  # counting a large log on every page view is expensive

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).using(chosen_shard(request))

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Model | None:
        return self.get_queryset(request).filter(pk=object_id).first()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(WriteLog)
class WriteLogAdmin(ShardResidentAdmin):
    list_display = ["position", "kind", "key", "write_id", "tenant_id", "occurred_at", "applied_at"]
    search_fields = ["key"]


@admin.register(RejectedWrite)
class RejectedWriteAdmin(ShardResidentAdmin):
    list_display = ["write_id", "kind", "key", "code", "reason", "tenant_id", "rejected_at"]
    search_fields = ["key", "code"]


@admin.register(LedgerAccount)
class LedgerAccountAdmin(ShardResidentAdmin):
    """Accounts are created through the API only (synchronously, on the tenant's shard), and never
    changed or deleted: a transfer in the log may name any of them."""

    list_filter = [ShardFilter, TenantFilter, "currency", "no_overdraft"]
    list_display = ["account_id", "currency", "no_overdraft", "balance", "tenant_id", "created_at"]
    search_fields = ["account_id"]


# --- The operations page -------------------------------------------------------------------------

admin.site.index_template = "admin/writes/index.html"
DEFAULT_REFRESH_SECONDS = 5


def operations_page(request: HttpRequest) -> HttpResponse:
    """Per shard: queue depth, apply rate, time to drain, last position, projection lag; staff only."""
    try:
        refresh = max(1, min(60, int(request.GET.get("refresh", DEFAULT_REFRESH_SECONDS))))
    except ValueError:
        refresh = DEFAULT_REFRESH_SECONDS
    context = {
        **admin.site.each_context(request),
        "title": "Operations",
        "initial": overview_as_dict(overview()),
        "refresh_seconds": refresh,
    }
    return TemplateResponse(request, "admin/writes/operations.html", context)


def operations_data(request: HttpRequest) -> JsonResponse:
    return JsonResponse(overview_as_dict(overview()))
