"""The OpenAPI schema and the docs page describe every endpoint, the edge's hot routes included."""

from __future__ import annotations

import pytest

from tests.conftest import ALL_DATABASES
from tests.edge import api_client

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

ENDPOINTS = [
    ("post", "/api/v1/events"),
    ("post", "/api/v1/conversations/{conversation_id}/messages"),
    ("get", "/api/v1/conversations/{conversation_id}/messages"),
    ("post", "/api/v1/conversations/{conversation_id}/members"),
    ("post", "/api/v1/conversations/{conversation_id}/read"),
    ("get", "/api/v1/conversations/{conversation_id}"),
    ("get", "/api/v1/users/{user_id}/inbox"),
    ("post", "/api/v1/ledger/transfers"),
    ("post", "/api/v1/ledger/accounts"),
    ("get", "/api/v1/ledger/accounts/{account_id}"),
    ("get", "/api/v1/writes/{write_id}"),
    ("get", "/api/v1/stats/events"),
    ("get", "/healthz"),
    ("get", "/readyz"),
]


def test_the_schema_served_by_the_api_documents_every_endpoint_and_the_docs_page_loads():
    client = api_client()
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    documented = {(method, path) for path, item in schema["paths"].items() for method in item}
    assert set(ENDPOINTS) <= documented, set(ENDPOINTS) - documented
    waits = {p["name"] for p in schema["paths"]["/api/v1/writes/{write_id}"]["get"]["parameters"]}
    assert "wait" in waits
    for path in [
        "/api/v1/stats/events",
        "/api/v1/conversations/{conversation_id}",
        "/api/v1/ledger/accounts/{account_id}",
    ]:
        assert "min_position" in {p["name"] for p in schema["paths"][path]["get"]["parameters"]}, path
    page = client.get("/api/docs/")
    assert page.status_code == 200
    assert b"swagger" in page.content.lower()
