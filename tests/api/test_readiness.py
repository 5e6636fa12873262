"""/readyz shares its verdict briefly: probes cannot multiply broker connections and database queries."""

from __future__ import annotations

import time

import pytest

from api.views import health
from tests.conftest import ALL_DATABASES
from tests.edge import api_client

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


def test_readyz_answers_from_its_cached_verdict_until_it_expires(settings):
    settings.READYZ_CACHE_SECONDS = 1.5
    health._verdict = None
    client = api_client()
    assert client.get("/readyz").status_code == 200
    # The broker goes away: within the cache window the answer does not open a connection to find out.
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"
    try:
        started = time.monotonic()
        cached = client.get("/readyz")
        assert time.monotonic() - started < 1.5
        assert cached.status_code == 200
        time.sleep(1.6)
        expired = client.get("/readyz")
        assert expired.status_code == 503
        assert expired.json()["error"]["details"][0]["broker"] == "unavailable"
    finally:
        health._verdict = None
