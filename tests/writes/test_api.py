"""The write API's HTTP contract: statuses and JSON error bodies (DESIGN section 9)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import api_client, edge_server
from writes.services import api_key_revoke

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


def error_of(response) -> Any:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) <= {"code", "message", "details", "ids"}
    return body["error"]


def test_post_event_answers_202_with_ids_and_location():
    tenant = make_tenant("acme")
    response = tenant.post_json("/api/v1/events", {"name": "signup", "properties": {"plan": "pro"}})
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 1
    assert response["Location"] == f"/api/v1/writes/{body['ids'][0]}"


def test_post_batch_answers_202_with_every_id_and_no_location():
    tenant = make_tenant("acme")
    given = str(uuid.uuid4())
    response = tenant.post_json("/api/v1/events", {"batch": [{"name": "a", "id": given}, {"name": "b"}]})
    assert response.status_code == 202
    assert response.json()["ids"][0] == given
    assert response.json()["accepted"] == 2
    assert not response.has_header("Location")


def test_invalid_items_answer_400_listing_each_and_enqueue_nothing():
    tenant = make_tenant("acme")
    good_id = str(uuid.uuid4())
    response = tenant.post_json(
        "/api/v1/events",
        {"batch": [{"name": "ok", "id": good_id}, {"name": ""}, {"name": "x", "timestamp": "yesterday"}]},
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid"
    assert [(d["index"], d["field"]) for d in error["details"]] == [(1, "name"), (2, "timestamp")]
    # all-or-nothing: the good item of the rejected request was not accepted either
    assert tenant.get(f"/api/v1/writes/{good_id}").json()["status"] == "pending"


def test_missing_bad_and_revoked_keys_answer_401():
    tenant = make_tenant("acme")
    body = json.dumps({"name": "x"})
    for client in [
        api_client(),
        api_client(HTTP_AUTHORIZATION="Bearer wk_nope"),
        api_client(HTTP_AUTHORIZATION="Token abc"),
    ]:
        response = client.post("/api/v1/events", data=body, content_type="application/json")
        assert response.status_code == 401
        assert error_of(response)["code"] == "unauthorized"
        assert response["WWW-Authenticate"].startswith("Bearer")
    api_key = tenant.tenant.api_keys.get()
    api_key_revoke(api_key=api_key)
    response = tenant.post_json("/api/v1/events", {"name": "x"})
    assert response.status_code == 401


def test_non_json_answers_415_and_malformed_json_400():
    tenant = make_tenant("acme")
    response = tenant.client.post("/api/v1/events", data="name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"
    response = tenant.client.post("/api/v1/events", data=b'{"name": ', content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"
    # Django's test client drops the content type of an empty body; a real client sends it.
    response = tenant.client.generic("POST", "/api/v1/events", b"", CONTENT_TYPE="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"


def test_body_over_5_mib_answers_413():
    tenant = make_tenant("acme")
    body = b'{"name": "x", "properties": {"p": "' + b"a" * (5 * 1024 * 1024) + b'"}}'
    response = tenant.client.post("/api/v1/events", data=body, content_type="application/json")
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


def test_unknown_write_and_unknown_path_answer_404_and_wrong_method_405():
    tenant = make_tenant("acme")
    response = tenant.get("/api/v1/writes/not-a-uuid")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    response = tenant.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    response = tenant.get("/api/v1/events")
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"


def test_unknown_id_is_pending_and_bad_wait_is_400():
    tenant = make_tenant("acme")
    write_id = uuid.uuid4()
    assert tenant.get(f"/api/v1/writes/{write_id}").json() == {"id": str(write_id), "status": "pending"}
    response = tenant.get(f"/api/v1/writes/{write_id}", wait="31")
    assert response.status_code == 400
    assert error_of(response)["details"][0]["field"] == "wait"


def test_broker_unreachable_answers_503_with_retry_after_and_the_ids_within_2_seconds():
    import time

    tenant = make_tenant("acme")
    with edge_server(CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:1//") as server:
        client = server.client(HTTP_AUTHORIZATION=f"Bearer {tenant.api_key}")
        started = time.monotonic()
        response = client.post("/api/v1/events", {"name": "x", "id": str(uuid.uuid4())})
        assert time.monotonic() - started < 2.0
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    error = response.json()["error"]
    assert error["code"] == "broker_unavailable"
    # The ids come back, so a retry with them is harmless.
    assert error["ids"] == [json.loads(response.raw.request.content)["id"]]


def test_health_readiness_schema_and_docs_answer_200():
    client = api_client()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"default": "ok", "shard_0": "ok", "shard_1": "ok", "broker": "ok"}
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert schema["openapi"].startswith("3.1")
    assert "/api/v1/events" in schema["paths"]
    assert "EventIn" in schema["components"]["schemas"]
    assert client.get("/api/docs/").status_code == 200
