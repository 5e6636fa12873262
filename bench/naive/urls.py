"""Routes of the baselines, mounted under /naive/ by ``bench.urls``."""

from __future__ import annotations

from django.urls import path

from bench.naive import views

urlpatterns = [
    path("events", views.NaiveEventsView.as_view(), name="naive-events"),
    path("celery-events", views.NaiveCeleryEventsView.as_view(), name="naive-celery-events"),
]
