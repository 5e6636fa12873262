"""Nasty requests, each answered with a clear 4xx and the JSON error body, and nothing enqueued.

Every write endpoint is in ``WRITE_ENDPOINTS``; an endpoint added later joins every case by being
added there (with a valid body of its own, which the cases mutate).
"""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from tests.edge import api_client, shared_server

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

FIVE_MIB = 5 * 1024 * 1024


@dataclass(frozen=True)
class WriteEndpoint:
    path: str
    valid_item: dict[str, Any]
    # A field that must be a string: the cases put numbers, NULs and surrogates in it.
    string_field: str
    # A free-form JSON object field (nesting limits), if the kind has one.
    object_field: str | None = None


WRITE_ENDPOINTS = [
    WriteEndpoint("/api/v1/events", {"name": "signup"}, string_field="name", object_field="properties"),
    WriteEndpoint("/api/v1/conversations/room-1/messages", {"sender_id": "ann", "body": "hi"}, string_field="body"),
    WriteEndpoint("/api/v1/conversations/room-1/read", {"user_id": "ann", "up_to": 1}, string_field="user_id"),
]


@dataclass(frozen=True)
class Nasty:
    name: str
    body: Any  # bytes as sent, or a function (endpoint) -> bytes
    status: int
    code: str
    field: str | None = None  # the field the first error detail names, when the case has one
    content_type: str = "application/json"


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _item(endpoint: WriteEndpoint, **changes: Any) -> dict[str, Any]:
    return {**endpoint.valid_item, **changes}


def _raw_string(endpoint: WriteEndpoint, raw: bytes) -> bytes:
    """The valid item with ``raw`` spliced in, unescaped, as the string field's JSON text."""
    item = _item(endpoint, **{endpoint.string_field: "@@"})
    return _json(item).replace(b'"@@"', raw)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


CASES = [
    Nasty("raw NUL byte", lambda e: _raw_string(e, b'"a\x00b"'), 400, "malformed_json"),
    Nasty("escaped NUL", lambda e: _raw_string(e, b'"a\\u0000b"'), 400, "invalid", field="string"),
    Nasty("invalid UTF-8", lambda e: _raw_string(e, b'"a\xff\xfeb"'), 400, "malformed_json"),
    Nasty("UTF-8 encoded surrogate", lambda e: _raw_string(e, b'"\xed\xa0\x80"'), 400, "malformed_json"),
    Nasty("lone high surrogate", lambda e: _raw_string(e, b'"\\ud800"'), 400, "malformed_json"),
    Nasty("lone low surrogate", lambda e: _raw_string(e, b'"\\udc00x"'), 400, "malformed_json"),
    Nasty("10,001 items", lambda e: _json({"batch": [e.valid_item] * 10_001}), 400, "invalid", field="batch"),
    Nasty("empty batch", lambda e: _json({"batch": []}), 400, "invalid", field="batch"),
    Nasty("batch not a list", lambda e: _json({"batch": e.valid_item}), 400, "invalid", field="batch"),
    Nasty("batch with another key", lambda e: _json({"batch": [e.valid_item], "x": 1}), 400, "invalid", field="x"),
    Nasty(
        "body 1 byte over 5 MiB",
        lambda e: b" " * (FIVE_MIB + 1 - len(_json(e.valid_item))) + _json(e.valid_item),
        413,
        "payload_too_large",
    ),
    Nasty("deeply nested arrays", lambda e: b"[" * 100_000 + b"]" * 100_000, 400, "malformed_json"),
    Nasty("deeply nested objects", lambda e: b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400, "malformed_json"),
    Nasty(
        "number past 2^63 where a string belongs",
        lambda e: _raw_string(e, str(2**63).encode()),
        400,
        "invalid",
        field="string",
    ),
    Nasty(
        "number past 2^64 where a string belongs",
        lambda e: _raw_string(e, str(2**64).encode()),
        400,
        "invalid",
        field="string",
    ),
    Nasty("float where a string belongs", lambda e: _raw_string(e, b"1.5"), 400, "invalid", field="string"),
    Nasty("number overflowing a double", lambda e: _raw_string(e, b"1e400"), 400, "malformed_json"),
    Nasty("NaN", lambda e: _raw_string(e, b"NaN"), 400, "malformed_json"),
    Nasty("byte order mark", lambda e: b"\xef\xbb\xbf" + _json(e.valid_item), 400, "malformed_json"),
    Nasty("text/plain", lambda e: _json(e.valid_item), 415, "unsupported_media_type", content_type="text/plain"),
    Nasty(
        "form encoded",
        lambda e: b"name=x",
        415,
        "unsupported_media_type",
        content_type="application/x-www-form-urlencoded",
    ),
    Nasty("no content type", lambda e: _json(e.valid_item), 415, "unsupported_media_type", content_type=""),
    Nasty("empty body", lambda e: b"", 400, "malformed_json"),
    Nasty("whitespace body", lambda e: b"  \n", 400, "malformed_json"),
    Nasty("truncated JSON", lambda e: _json(e.valid_item)[:-1], 400, "malformed_json"),
    Nasty("two JSON documents", lambda e: _json(e.valid_item) * 2, 400, "malformed_json"),
    Nasty("JSON array at the top level", lambda e: _json([e.valid_item]), 400, "invalid", field="$"),
    Nasty("JSON string at the top level", lambda e: _json("hello"), 400, "invalid", field="$"),
    Nasty("JSON null", lambda e: b"null", 400, "invalid", field="$"),
    Nasty("unknown field", lambda e: _json(_item(e, colour="red")), 400, "invalid", field="colour"),
    Nasty(
        "tenant_id smuggled in",
        lambda e: _json(_item(e, tenant_id=str(uuid.uuid4()))),
        400,
        "invalid",
        field="tenant_id",
    ),
    Nasty("id that is not a UUID", lambda e: _json(_item(e, id="42")), 400, "invalid", field="id"),
    Nasty("integer id", lambda e: _json(_item(e, id=42)), 400, "invalid", field="id"),
]
OBJECT_CASES = [
    Nasty(
        "object nested 11 levels",
        lambda e: _json(_item(e, **{e.object_field: _nested(11)})),
        400,
        "invalid",
        field="object",
    ),
    Nasty(
        "integer past 2^63 in an object",
        lambda e: _json(_item(e, **{e.object_field: {"n": 2**63}})),
        400,
        "invalid",
        field="object",
    ),
    Nasty(
        "NUL in an object key",
        lambda e: _json(_item(e, **{e.object_field: {"a\u0000": 1}})),
        400,
        "invalid",
        field="object",
    ),
    Nasty("object that is a list", lambda e: _json(_item(e, **{e.object_field: [1]})), 400, "invalid", field="object"),
]


def _post(tenant: TenantHandle, endpoint: WriteEndpoint, case: Nasty) -> Any:
    body = case.body(endpoint)
    return tenant.client.generic("POST", endpoint.path, body, CONTENT_TYPE=case.content_type)


def _assert_error(response: Any, case: Nasty, endpoint: WriteEndpoint) -> None:
    assert response.status_code == case.status, response.content[:500]
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == case.code
    assert error["message"]
    if case.field is not None:
        expected = {"string": endpoint.string_field, "object": endpoint.object_field}.get(case.field, case.field)
        assert error["details"][0]["field"].split(".")[0] == expected, error


@pytest.mark.parametrize("endpoint", WRITE_ENDPOINTS, ids=lambda e: e.path)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_nasty_write_request_answers_4xx_with_json_error(endpoint, case):
    tenant = make_tenant("nasty")
    _assert_error(_post(tenant, endpoint, case), case, endpoint)


@pytest.mark.parametrize("endpoint", [e for e in WRITE_ENDPOINTS if e.object_field], ids=lambda e: e.path)
@pytest.mark.parametrize("case", OBJECT_CASES, ids=lambda c: c.name)
def test_nasty_object_field_answers_400_naming_it(endpoint, case):
    tenant = make_tenant("nasty")
    _assert_error(_post(tenant, endpoint, case), case, endpoint)


@pytest.mark.parametrize("endpoint", WRITE_ENDPOINTS, ids=lambda e: e.path)
def test_duplicate_json_keys_keep_the_last_value(endpoint):
    """RFC 8259 leaves duplicate names undefined; the API takes the last, as JavaScript and Python do."""
    tenant = make_tenant("dupes")
    first, last = uuid.uuid4(), uuid.uuid4()
    item = _json(endpoint.valid_item)[:-1] + f', "id": "{first}", "id": "{last}"}}'.encode()
    response = tenant.client.generic("POST", endpoint.path, item, CONTENT_TYPE="application/json")
    assert response.status_code == 202
    assert response.json()["ids"] == [str(last)]


@pytest.mark.parametrize(
    ("query", "field"), [("wait=31", "wait"), ("wait=-1", "wait"), ("wait=nan", "wait"), ("wait=1e999", "wait")]
)
def test_bad_status_query_answers_400(query, field):
    tenant = make_tenant("query")
    response = tenant.client.get(f"/api/v1/writes/{uuid.uuid4()}?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == field


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer a b", "Bearer wk_\u00e9", "Basic dXNlcjpwYXNz", "Bearer " + "wk_" + "a" * 5000],
)
def test_malformed_authorization_answers_401(header):

    response = api_client(HTTP_AUTHORIZATION=header).post(
        "/api/v1/events", data=b'{"name":"x"}', content_type="application/json"
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_a_header_no_http_parser_accepts_is_refused_with_400_not_5xx():
    """A NUL in a header never reaches the application: the server's HTTP parser refuses the request."""
    request = (
        b"POST /api/v1/events HTTP/1.1\r\nHost: api\r\nAuthorization: bearer\x00x\r\n"
        b'Content-Type: application/json\r\nContent-Length: 12\r\n\r\n{"name":"x"}'
    )
    with socket.create_connection(("127.0.0.1", shared_server().port), timeout=5) as connection:
        connection.sendall(request)
        status_line = connection.recv(200).split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] == b"400", status_line


def test_gzip_bodies_are_accepted_and_limited_after_inflating():
    import gzip

    tenant = make_tenant("gzip")
    body = json.dumps({"batch": [{"name": "zipped", "properties": {"n": n}} for n in range(500)]}).encode()
    accepted = tenant.client.post(
        "/api/v1/events", data=gzip.compress(body), content_type="application/json", HTTP_CONTENT_ENCODING="gzip"
    )
    assert accepted.status_code == 202, accepted.content
    assert accepted.json()["accepted"] == 500
    # A small body that inflates past the 5 MiB limit (a decompression bomb) is refused as too large.
    bomb = gzip.compress(b"[" + b" " * (6 * 1024 * 1024) + b"]")
    assert len(bomb) < 10_000
    refused = tenant.client.post(
        "/api/v1/events", data=bomb, content_type="application/json", HTTP_CONTENT_ENCODING="gzip"
    )
    assert refused.status_code == 413
    for broken in [b"not gzip at all", gzip.compress(body)[:-20]]:
        response = tenant.client.post(
            "/api/v1/events", data=broken, content_type="application/json", HTTP_CONTENT_ENCODING="gzip"
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "malformed_gzip"
    other = tenant.client.post("/api/v1/events", data=body, content_type="application/json", HTTP_CONTENT_ENCODING="br")
    assert other.status_code == 415
