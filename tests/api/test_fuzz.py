"""Every query parameter, path segment, method and header of every endpoint, fed nasty values over HTTP:
never a 5xx, always the JSON error body (or the normal JSON answer)."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import ApiClient, ApiResponse, api_client

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

# Percent-encoded as sent; each decodes to something a parser could trip on.
NASTY = [
    "",
    "%20",
    "-1",
    "0",
    "%C2%B2",  # "²": str.isdigit() says yes, int() says no
    "%EF%BC%91",  # a fullwidth digit one
    "1e400",
    "NaN",
    "inf",
    "-0",
    "1.5",
    "9" * 40,
    "0001-01-01",
    "0001-01-01T00:00%2B01:00",
    "9999-12-31T23:59:59-14:00",
    "%00",
    "a%00b",
    "%FF%FE",  # not UTF-8
    "%ED%A0%80",  # an encoded lone surrogate
    "%E2%80%AE",  # right-to-left override
    "x" * 5000,
    "..%2F..%2Fetc%2Fpasswd",
    "%27%20OR%201%3D1%20--",
    "true",
    "null",
    "%5B%5D",
    "%7B%7D",
    "%F0%9F%92%A5",  # an emoji
]

# Every endpoint with a method (its path given the segment to put in it) and the query parameters it
# reads; each also gets one it does not know.
ENDPOINTS: list[tuple[str, str, list[str]]] = [
    ("GET", "/api/v1/writes/{}", ["wait"]),
    ("GET", "/api/v1/stats/events", ["name", "start", "end", "interval", "min_position", "wait", "limit", "after"]),
    ("GET", "/api/v1/conversations/{}", ["min_position"]),
    ("GET", "/api/v1/conversations/{}/messages", ["after", "limit", "min_position"]),
    ("GET", "/api/v1/users/{}/inbox", ["limit", "min_position"]),
    ("GET", "/api/v1/ledger/accounts/{}", ["min_position"]),
    ("POST", "/api/v1/events", []),
    ("POST", "/api/v1/conversations/{}/messages", []),
    ("POST", "/api/v1/conversations/{}/members", []),
    ("POST", "/api/v1/conversations/{}/read", []),
    ("POST", "/api/v1/ledger/transfers", []),
    ("POST", "/api/v1/ledger/accounts", []),
    ("GET", "/healthz", []),
    ("GET", "/readyz", []),
    ("GET", "/metrics", []),
    ("GET", "/api/schema/", ["format"]),
]
BODIES = {"POST": b'{"name": "x", "sender_id": "a", "body": "b", "user_ids": ["a"], "user_id": "a", "up_to": 1}'}


def _assert_answered(response: ApiResponse, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.content[:300]!r}"
    # The schema's own errors come in the schema's media type (what its ?format= asks for).
    if response.status_code >= 400 and "/api/schema/" not in what:
        assert response.headers.get("content-type", "").startswith("application/json"), what
        body = response.json()
        assert set(body) == {"error"}, what
        assert {"code", "message", "details"} <= set(body["error"]), what


def _send(client: ApiClient, method: str, path: str) -> ApiResponse:
    body = BODIES.get(method)
    content_type = "application/json" if body is not None else None
    return client.generic(method, path, data=body or b"", content_type=content_type)


def test_nasty_query_values_never_get_a_5xx():
    tenant = make_tenant("fuzz-query")
    cases = 0
    for method, template, parameters in ENDPOINTS:
        path = template.format("fuzzed")
        for parameter in [*parameters, "unknown"]:
            for value in NASTY:
                # A valid min_position would hold the request: never longer than wait=0 allows.
                extra = "&wait=0" if parameter == "min_position" else ""
                response = _send(tenant.client, method, f"{path}?{parameter}={value}{extra}")
                _assert_answered(response, f"{method} {path}?{parameter}={value[:40]}")
                cases += 1
    assert cases == sum(len(parameters) + 1 for _, _, parameters in ENDPOINTS) * len(NASTY)


def test_nasty_path_segments_never_get_a_5xx():
    tenant = make_tenant("fuzz-path")
    for method, template, _ in ENDPOINTS:
        if "{}" not in template:
            continue
        for value in [*NASTY, "%2F", "a%2Fb", quote("名前"), "%25", "."]:
            response = _send(tenant.client, method, template.format(value))
            _assert_answered(response, f"{method} {template.format(value[:40])}")


@pytest.mark.parametrize("method", ["ZQX1", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "CONNECT"])
def test_any_method_on_any_endpoint_never_gets_a_5xx_nor_a_new_metrics_series(method):
    tenant = make_tenant("fuzz-method")
    for _, template, _ in ENDPOINTS:
        response = tenant.client.generic(method, template.format("x"))
        assert response.status_code < 500, f"{method} {template}: {response.status_code}"
    metrics = api_client().get("/metrics").content.decode()
    assert f'method="{method}"' not in metrics or method in {"PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"}


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_CONTENT_TYPE": "application/json; charset=latin-1"},
        {"HTTP_CONTENT_TYPE": "application/jsonx"},
        {"HTTP_CONTENT_TYPE": "multipart/form-data; boundary=x"},
        {"HTTP_CONTENT_ENCODING": "gzip, gzip"},
        {"HTTP_CONTENT_ENCODING": "deflate"},
        {"HTTP_ACCEPT": "text/html"},
        {"HTTP_ACCEPT": "\u00e9/\u00e9"},
        {"HTTP_X_FORWARDED_FOR": "1.2.3.4, ::1, nonsense"},
        {"HTTP_HOST": "evil.example"},
        {"HTTP_AUTHORIZATION": "Bearer " + "wk_" + "x" * 97},
        {"HTTP_AUTHORIZATION": "Bearer\twk_tab"},
    ],
    ids=lambda headers: next(iter(headers)),
)
def test_odd_headers_never_get_a_5xx(headers):
    tenant = make_tenant("fuzz-headers")
    for method, template, _ in ENDPOINTS:
        client = api_client(HTTP_AUTHORIZATION=f"Bearer {tenant.api_key}")
        response = client.generic(
            method, template.format("x"), data=BODIES.get(method, b""), content_type="application/json", **headers
        )
        _assert_answered(response, f"{method} {template} with {headers}")
