"""The write path's Django app; ``ready`` registers the kinds' apply hooks."""

from __future__ import annotations

from django.apps import AppConfig


class WritesConfig(AppConfig):
    name = "writes"
    verbose_name = "Writes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from writes.apply import KIND_HOOKS
        from writes.erasure import EXTRA_STEPS
        from writes.ledger import TRANSFER_KIND, TransferApplyHook

        KIND_HOOKS[TRANSFER_KIND] = TransferApplyHook()
        # A tenant's erasure also rewrites the log's archives without its rows.
        if erase_archives not in EXTRA_STEPS:
            EXTRA_STEPS.append(erase_archives)


def erase_archives(tenant_id: str) -> dict[str, int]:
    """``writes.archive.erase_tenant_from_archives``, imported when an erasure runs: pyarrow costs every
    API and worker process 50 MB and its import time, and only maintenance needs it."""
    from writes.archive import erase_tenant_from_archives

    return erase_tenant_from_archives(tenant_id)
