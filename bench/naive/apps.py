from __future__ import annotations

from django.apps import AppConfig


class NaiveConfig(AppConfig):
    name = "bench.naive"
    label = "naive"
    verbose_name = "Benchmark baselines"
    default_auto_field = "django.db.models.BigAutoField"
