"""A shard URL may name a primary and its standbys: Django and the edge hand libpq every host, and libpq
connects to the first that takes writes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import psycopg
from django.conf import settings

from api.edge.database import connection_kwargs
from config.settings import database
from tests.stack import ROOT


def test_database_url_with_one_host_is_parsed_as_before():
    config = database("postgres://app:pw@db.example:6432/writes_shard_0")
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("db.example", 6432, "writes_shard_0")
    assert (config["USER"], config["PASSWORD"]) == ("app", "pw")


def test_database_url_with_a_primary_and_standbys_gives_libpq_host_and_port_lists():
    config = database(
        "postgres://app:pw@primary:5432,standby-a:5433,standby-b/writes_shard_1?target_session_attrs=read-write"
    )
    assert config["HOST"] == "primary,standby-a,standby-b"
    assert config["PORT"] == "5432,5433,5432"
    assert config["NAME"] == "writes_shard_1"
    assert (config["USER"], config["PASSWORD"]) == ("app", "pw")
    assert config["OPTIONS"]["target_session_attrs"] == "read-write"


def test_multi_host_shard_url_connects_past_a_server_that_does_not_answer(monkeypatch):
    """The first host refuses connections (as a killed primary does); Django's connection parameters and
    the edge's pool parameters both reach the next one."""
    config = database("postgres://postgres@127.0.0.1:1,127.0.0.1:5432/postgres?target_session_attrs=read-write")
    monkeypatch.setitem(settings.DATABASES, "multi", config)
    kwargs = connection_kwargs("multi")
    assert kwargs["host"] == "127.0.0.1,127.0.0.1"
    assert kwargs["target_session_attrs"] == "read-write"

    async def ask() -> str:
        async with await psycopg.AsyncConnection.connect(**kwargs) as connection:
            row = await (await connection.execute("SELECT inet_server_port()::text")).fetchone()
            assert row is not None
            return str(row[0])

    assert asyncio.run(ask()) == "5432"


def test_shard_database_urls_split_between_urls_not_inside_a_multi_host_one():
    listed = (
        "postgres://u@db-main:5432/writes_shard_0,"
        "postgres://u@db-shard1:5432,db-shard1-standby:5432/writes_shard_1?target_session_attrs=read-write"
    )
    result = subprocess.run(
        [sys.executable, "-c", "from config import settings; print(repr(settings.SHARD_DATABASE_URLS))"],
        env={**os.environ, "SHARD_DATABASE_URLS": listed},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert result.stdout.strip() == repr(listed.split(",", 1))
