"""Top-level routes: the API, its schema and docs, health checks and the admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from writes.api import views as write_views

urlpatterns = [
    path("api/v1/", include("writes.api.urls")),
    path("api/v1/", include("readmodels.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("healthz", write_views.healthz, name="healthz"),
    path("readyz", write_views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
]

handler404 = "writes.api.errors.json_not_found"
handler500 = "writes.api.errors.json_server_error"
