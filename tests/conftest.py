from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.db import OperationalError, connections
from django.test import TransactionTestCase

from tests.edge import ApiClient, shared_server, stop_shared_server
from tests.stack import Worker, purge_queues
from writes.models import Tenant
from writes.queue_policies import prepare_queues
from writes.queues import maintenance_queue_name, queue_name
from writes.services import api_key_issue, shard_for_logical, tenant_create

ALL_DATABASES = ["default", *settings.SHARD_ALIASES]


def _flush_retrying_deadlocks(self: TransactionTestCase) -> None:
    """A transactional test's flush (one TRUNCATE of every table) can deadlock with a projector run of
    the suite's live worker that still holds the read models' rows; PostgreSQL then aborts one of the
    two, and a worker that keeps retrying can win every time. So on a deadlock the busy sessions on
    the test databases (the worker's) are ended (workers reconnect and retry their transaction: nothing
    is acked before COMMIT) and the flush is retried."""
    for attempt in range(5):
        try:
            _django_fixture_teardown(self)
            return
        except (OperationalError, CommandError) as exc:  # flush wraps the database's error (its cause)
            if "deadlock detected" not in f"{exc} {exc.__cause__}" or attempt == 4:
                raise
            _end_other_sessions()
            time.sleep(0.2 * (attempt + 1))


def _end_other_sessions() -> None:
    for alias in ALL_DATABASES:
        with connections[alias].cursor() as cursor:
            cursor.execute(
                # Only sessions inside a statement or transaction (the worker's), never the API's.
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state <> 'idle' AND application_name <> 'writes-edge'"
            )


_django_fixture_teardown = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]
TransactionTestCase._fixture_teardown = _flush_retrying_deadlocks  # type: ignore[attr-defined]


@pytest.fixture
def lifecycle_reset() -> Iterator[None]:
    """For a test that retires days of the log: afterwards no day stays retired, so the tests after it
    find every day writable again (the applier re-creates a dropped day's partition on demand). The
    flush between tests empties the log but not ``log_partitions``, which no model describes."""
    yield
    for alias in settings.SHARD_ALIASES:
        with connections[alias].cursor() as cursor:
            cursor.execute("DELETE FROM log_partitions WHERE state = 'retired'")
            cursor.execute("UPDATE log_partitions SET retired_kinds = '{}', retired_at = NULL")


class TenantHandle:
    """A tenant as a client sees it: its key, its shard, and a test client that sends the key."""

    def __init__(self, tenant: Tenant, api_key: str) -> None:
        self.tenant = tenant
        self.api_key = api_key
        self.shard = shard_for_logical(tenant.logical_shard)
        self.client: ApiClient = shared_server().client(HTTP_AUTHORIZATION=f"Bearer {api_key}")

    def post_json(self, path: str, body: Any) -> Any:
        return self.client.post(path, data=json.dumps(body), content_type="application/json")

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(path, params)


def make_tenant(name: str, *, shard: str | None = None) -> TenantHandle:
    """Create a tenant; with ``shard``, retry until its hash lands on that physical shard."""
    for attempt in range(200):
        tenant = tenant_create(name=f"{name}-{attempt}" if attempt else name)
        if shard is None or shard_for_logical(tenant.logical_shard) == shard:
            return TenantHandle(tenant, api_key_issue(tenant=tenant).secret)
        tenant.delete()
    raise AssertionError(f"no tenant landed on {shard}")


@pytest.fixture(scope="session", autouse=True)
def _api_server_stopped_at_exit(django_db_setup: None) -> Iterator[None]:
    yield
    stop_shared_server()


@pytest.fixture(scope="session", autouse=True)
def _queues_prepared() -> None:
    """The suite's queues and their policy (bounds, delivery limit), as ``make run`` prepares them."""
    prepare_queues()


@pytest.fixture
def tenant_factory() -> Any:
    return make_tenant


@pytest.fixture(scope="session")
def live_worker(django_db_setup: None, django_db_blocker: Any) -> Iterator[Worker]:
    """A real Celery worker consuming every shard queue of the test databases."""
    purge_queues()
    worker = Worker([*(queue_name(alias) for alias in settings.SHARD_ALIASES), maintenance_queue_name()], concurrency=2)
    yield worker
    worker.stop()
