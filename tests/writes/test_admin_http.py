"""The admin over HTTP, as a browser reaches it: a new API key never travels in a cookie, and the admin
lives where ``ADMIN_PATH`` says."""

from __future__ import annotations

import re

import httpx
import pytest
from django.contrib.auth.models import User
from django.contrib.messages.storage.cookie import CookieStorage
from django.http import HttpRequest

from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import shared_server
from tests.stack import ApiServer
from writes.models import ApiKey
from writes.services import hash_api_key

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

PASSWORD = "pw-for-http-tests"


def _csrf_token(page: str) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert found, "the form carries a CSRF token"
    return found.group(1)


def _set_cookies(responses: list[httpx.Response]) -> list[str]:
    return [value for response in responses for value in response.headers.get_list("set-cookie")]


def _message_texts(set_cookies: list[str]) -> list[str]:
    """What Django's cookie-backed messages in these headers say (they are signed and may be compressed,
    so the secret could hide in them without appearing as it is)."""
    texts: list[str] = []
    for header in set_cookies:
        name, _, rest = header.partition("=")
        if name.strip() == "messages":
            value = rest.split(";", 1)[0].strip('"')
            decoded = CookieStorage(HttpRequest())._decode(value) if value else None  # type: ignore[attr-defined]
            texts.extend(str(message) for message in decoded or [])
    return texts


def _login(http: httpx.Client, admin_path: str = "/admin/") -> list[httpx.Response]:
    page = http.get(f"{admin_path}login/")
    answer = http.post(
        f"{admin_path}login/",
        data={"username": "http-admin", "password": PASSWORD, "csrfmiddlewaretoken": _csrf_token(page.text)},
    )
    assert answer.status_code == 302, answer.text[:500]
    return [page, answer]


def test_a_new_api_key_is_shown_on_the_answer_and_never_set_in_a_cookie():
    User.objects.create_superuser("http-admin", "admin@example.com", PASSWORD)
    tenant = make_tenant("key-by-http").tenant
    with httpx.Client(base_url=shared_server().url, timeout=30) as http:
        seen = _login(http)
        form = http.get("/admin/writes/apikey/add/")
        created = http.post(
            "/admin/writes/apikey/add/",
            data={"tenant": str(tenant.pk), "label": "by-http", "csrfmiddlewaretoken": _csrf_token(form.text)},
        )
        seen += [form, created]
        # Wherever the answer leads (Django's default is a redirect to the list with a message), follow it.
        while created.is_redirect:
            created = http.get(created.headers["location"])
            seen.append(created)
        seen.append(http.get("/admin/writes/apikey/"))
    stored = ApiKey.objects.get(tenant=tenant, label="by-http")
    shown = re.findall(r"wk_[A-Za-z0-9_-]{20,}", "".join(response.text for response in seen))
    secrets = [candidate for candidate in shown if hash_api_key(candidate) == stored.key_hash]
    assert secrets, "the new key is shown to the admin who created it"
    secret = secrets[0]
    set_cookies = _set_cookies(seen)
    assert not [header for header in set_cookies if secret in header]
    assert not [text for text in _message_texts(set_cookies) if secret in text]
    assert all(secret not in value for value in http.cookies.values())
    assert "no-store" in seen[3].headers.get("cache-control", ""), "the page with the key is not cached"
    assert secret not in seen[-1].text  # shown once: the list does not show it again


def test_the_admin_answers_under_admin_path_only():
    User.objects.create_superuser("http-admin", "admin@example.com", PASSWORD)
    api = ApiServer(workers=1, environment={"ADMIN_PATH": "/back-office-7f3a"})
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            assert http.get("/admin/").status_code == 404
            assert http.get("/admin/login/").status_code == 404
            moved = http.get("/back-office-7f3a/")
            assert moved.status_code == 302
            assert moved.headers["location"].startswith("/back-office-7f3a/login/")
            _login(http, "/back-office-7f3a/")
            assert http.get("/back-office-7f3a/writes/apikey/").status_code == 200
            operations = http.get("/back-office-7f3a/operations/")
            assert operations.status_code == 200
            assert 'data-url="/back-office-7f3a/operations/data"' in operations.text
    finally:
        api.stop()
