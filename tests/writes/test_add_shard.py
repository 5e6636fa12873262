"""``add_shard URL``, run as an operator runs it: the new shard is created, migrated (with its
append-only log) and given its queue, and the command says what to do next."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.conf import settings
from kombu import Connection

from tests.conftest import ALL_DATABASES
from tests.stack import ROOT, database_url, stack_environment
from writes.queues import queue_name

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

NEW_ALIAS = f"shard_{len(settings.SHARD_ALIASES)}"


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=stack_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def new_shard_url() -> Iterator[str]:
    """A database URL nobody uses yet; the database and its queue are dropped afterwards."""
    server = database_url("default").rsplit("/", 1)[0]
    name = f"{database_url('default').rsplit('/', 1)[1]}_added_shard"

    def drop() -> None:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with Connection(settings.CELERY_BROKER_URL) as broker:
            channel: Any = broker.channel()
            channel.queue_delete(queue_name(NEW_ALIAS))

    drop()
    yield f"{server}/{name}"
    drop()


def test_add_shard_creates_migrates_and_queues_a_new_shard(new_shard_url):
    done = manage("add_shard", new_shard_url)
    assert done.returncode == 0, done.stderr
    assert f"{NEW_ALIAS} is ready" in done.stdout
    assert f"move_logical_shard L --to {NEW_ALIAS}" in done.stdout

    with psycopg.connect(new_shard_url, autocommit=True) as shard:
        tables = {row[0] for row in shard.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"write_log", "rejected_writes", "moved_logical_shards"} <= tables
        assert "auth_user" not in tables  # control tables stay in the control database
        shard.execute(
            "INSERT INTO write_log (tenant_id, write_id, kind, key, payload, occurred_at, received_at, id_day) "
            "VALUES (%s, %s, 'event', 'k', '{}', now(), now(), (now() AT TIME ZONE 'UTC')::date)",
            [uuid.uuid4(), uuid.uuid4()],
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            shard.execute("DELETE FROM write_log")

    # The queue exists (a passive declare fails otherwise) and is empty.
    with Connection(settings.CELERY_BROKER_URL) as broker:
        channel: Any = broker.channel()
        declared = channel.queue_declare(queue=queue_name(NEW_ALIAS), passive=True)
    assert declared[1] == 0

    # A database that is already a shard is refused with a reason, not a traceback.
    again = manage("add_shard", database_url("shard_0"))
    assert again.returncode != 0
    assert "already configured as shard_0" in again.stderr
