from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connections


def wait_for_projections(timeout: float = 60.0) -> None:
    """Wait until every projection has read each shard's whole log: the projector is idle. A client
    test writes thousands of rows; a projector still busy with them when the test's databases are
    truncated deadlocks with the TRUNCATE."""
    deadline = time.monotonic() + timeout
    for alias in settings.SHARD_ALIASES:
        while time.monotonic() < deadline:
            with connections[alias].cursor() as cursor:
                cursor.execute(
                    "SELECT (SELECT coalesce(max(position), 0) FROM write_log),"
                    " (SELECT coalesce(min(position), 0) FROM projection_checkpoints)"
                )
                logged, projected = cursor.fetchone()
            if projected >= logged:
                break
            time.sleep(0.1)


@pytest.fixture(autouse=True)
def _projector_idle_after_each_test() -> Iterator[None]:
    yield
    wait_for_projections()
