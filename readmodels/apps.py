from __future__ import annotations

from django.apps import AppConfig


class ReadmodelsConfig(AppConfig):
    name = "readmodels"
    verbose_name = "Read models"
    default_auto_field = "django.db.models.BigAutoField"
