"""Routes of the read API, mounted under /api/v1/ next to the write API's."""

from __future__ import annotations

from django.urls import path

from readmodels.api import views

urlpatterns = [
    path("stats/events", views.EventStatsView.as_view(), name="stats-events"),
]
