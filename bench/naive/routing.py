"""Migrations of the baselines go to every shard (the product's router would keep them on control)."""

from __future__ import annotations

from typing import Any

from django.conf import settings


class NaiveMigrationRouter:
    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        if app_label != "naive":
            return None
        return db in settings.SHARD_ALIASES
