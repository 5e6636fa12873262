"""The API as clients reach it, inside the test process: uvicorn serving ``config.asgi``'s application
(the edge for the hot routes, Django for the rest) on a free port, and an HTTP client for it.

``ApiClient`` takes the arguments of Django's test ``Client`` (``HTTP_AUTHORIZATION=…``, ``get(path,
params)``, ``post(path, data, content_type=…)``, ``generic``) so tests read the same; every request
goes over a real socket to the real server. The server's connections are its own, so tests that use
it run with ``transaction=True``: what a test creates must be committed for the API to see it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn
from django.test import override_settings

from tests.stack import free_port


class ApiResponse:
    """An answer, readable as a Django test response is (``response["Location"]``, ``.json()``)."""

    def __init__(self, response: httpx.Response) -> None:
        self.raw = response
        self.status_code = response.status_code
        self.headers = response.headers
        self.content = response.content

    def json(self) -> Any:
        return json.loads(self.content)

    def __getitem__(self, name: str) -> str:
        return self.headers[name]

    def has_header(self, name: str) -> bool:
        return name in self.headers

    def get(self, name: str, default: str | None = None) -> str | None:
        found: str | None = self.headers.get(name, default)
        return found


class EdgeServer:
    """uvicorn running the API application in a thread of this process."""

    def __init__(self) -> None:
        from api.edge.app import Application  # after the test databases exist: the edge reads their names

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            Application(), host="127.0.0.1", port=self.port, lifespan="on", log_level="warning", loop="asyncio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"edge-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API did not start")
            time.sleep(0.01)

    def client(self, **defaults: Any) -> ApiClient:
        return ApiClient(self.url, **defaults)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=40)


class ApiClient:
    def __init__(self, base_url: str, **defaults: Any) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=60)
        self._headers = _headers(defaults)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        content: bytes | str | None = None,
        content_type: str | None = None,
        **extra: Any,
    ) -> ApiResponse:
        headers: dict[bytes, bytes] = {**self._headers, **_headers(extra)}
        if content_type is not None:
            headers[b"content-type"] = content_type.encode("latin-1")
        return ApiResponse(self._http.request(method, path, params=params, content=content, headers=headers))

    def get(self, path: str, data: Any = None, **extra: Any) -> ApiResponse:
        # httpx replaces a query already in ``path`` with ``params``, even an empty one.
        return self.request("GET", path, params=data or None, **extra)

    def post(self, path: str, data: Any = None, content_type: str = "application/json", **extra: Any) -> ApiResponse:
        if data is not None and not isinstance(data, bytes | str):
            data = json.dumps(data)
        return self.request("POST", path, content=data, content_type=content_type, **extra)

    def generic(
        self, method: str, path: str, data: bytes | str = b"", content_type: str | None = None, **extra: Any
    ) -> ApiResponse:
        return self.request(method, path, content=data, content_type=content_type, **extra)

    def close(self) -> None:
        self._http.close()


def _headers(meta: dict[str, Any]) -> dict[bytes, bytes]:
    """Django-style ``HTTP_X_FOO=value`` keyword arguments as ``X-Foo: value`` headers (any text that
    Latin-1 can carry goes on the wire as it is, as a client could send it)."""
    headers: dict[bytes, bytes] = {}
    for key, value in meta.items():
        name = "content-type" if key == "CONTENT_TYPE" else key[5:].replace("_", "-").lower()
        if key.startswith("HTTP_") or key == "CONTENT_TYPE":
            headers[name.encode()] = value if isinstance(value, bytes) else str(value).encode("latin-1")
    return headers


@contextlib.contextmanager
def edge_server(**overrides: Any) -> Iterator[EdgeServer]:
    """A server of its own, started with these settings changed (e.g. a broker that does not answer)."""
    with override_settings(**overrides):
        server = EdgeServer()
        try:
            yield server
        finally:
            server.stop()


_server: EdgeServer | None = None


def shared_server() -> EdgeServer:
    """The session's API server, started on first use."""
    global _server
    if _server is None:
        _server = EdgeServer()
    return _server


def api_client(**defaults: Any) -> ApiClient:
    """A client of the session's API server (``HTTP_AUTHORIZATION=…`` and other headers as defaults)."""
    return shared_server().client(**defaults)


def stop_shared_server() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None
