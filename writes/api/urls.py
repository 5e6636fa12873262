"""Routes of the write API, mounted under /api/v1/."""

from __future__ import annotations

from django.urls import path

from writes.api import views

urlpatterns = [
    path("events", views.EventsView.as_view(), name="events"),
    path("writes/<str:write_id>", views.WriteStatusView.as_view(), name="write-status"),
]
