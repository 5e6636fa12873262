from __future__ import annotations

from django.apps import AppConfig


class WritesConfig(AppConfig):
    name = "writes"
    verbose_name = "Writes"
    default_auto_field = "django.db.models.BigAutoField"
