"""Routes of the benchmark's API processes: the product's routes plus the baselines under /naive/."""

from __future__ import annotations

from django.urls import include, path

from config.urls import handler404, handler500
from config.urls import urlpatterns as product_urlpatterns

urlpatterns = [
    *product_urlpatterns,
    path("naive/", include("bench.naive.urls")),
]

__all__ = ["handler404", "handler500", "urlpatterns"]
