"""Top-level routes: the API, its schema and docs, health checks and the admin (under ``ADMIN_PATH``)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from api.views import health
from writes import admin as write_admin

urlpatterns = [
    path("api/v1/", include("api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path(f"{settings.ADMIN_PATH}operations/", admin.site.admin_view(write_admin.operations_page), name="operations"),
    path(
        f"{settings.ADMIN_PATH}operations/data",
        admin.site.admin_view(write_admin.operations_data),
        name="operations-data",
    ),
    path(settings.ADMIN_PATH, admin.site.urls),
]

handler400 = "api.errors.json_bad_request"
handler403 = "api.errors.json_forbidden"
handler404 = "api.errors.json_not_found"
handler500 = "api.errors.json_server_error"
