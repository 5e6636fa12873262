"""schemathesis against the project's own OpenAPI schema, in process: no 5xx, responses as documented.

Fixed seed and bounded examples, so a run is repeatable and fast; a failure prints the request to replay.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import ALL_DATABASES, make_tenant

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

# Validity that a JSON Schema cannot state (a timestamp at most a day ahead of now, the nesting depth of
# free-form properties) makes some schema-valid bodies a correct 400, so "schema-valid is accepted" is
# not checked; every other check runs.
EXCLUDED_CHECKS = [positive_data_acceptance]
config = schemathesis.Config.from_dict({"phases": {"stateful": {"enabled": False}}})
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application(), config=config)


@pytest.fixture
def api_key() -> Iterator[str]:
    # Requests run in this thread through the WSGI handler, whose request signals would close the
    # test's database connection (and its transaction); Django's own test client unhooks them too.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield make_tenant("schemathesis").api_key
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_answers_as_its_schema_says(case, api_key):
    case.call_and_validate(headers={"Authorization": f"Bearer {api_key}"}, excluded_checks=EXCLUDED_CHECKS)
