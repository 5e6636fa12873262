"""API keys (hashed at rest, shown once, revoked at once, never logged), the admin's login, and the
production settings' refusals."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import runpy
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext

from api.keys import cached_tenant_for_api_key
from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import api_client
from writes.models import ApiKey, Tenant

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


def test_api_key_is_stored_only_as_its_sha256_and_a_short_prefix():
    tenant = make_tenant("hashed")
    stored = ApiKey.objects.get(tenant=tenant.tenant)
    assert stored.key_hash == hashlib.sha256(tenant.api_key.encode()).hexdigest()
    assert tenant.api_key.startswith(stored.prefix)
    assert len(stored.prefix) <= 10 < len(tenant.api_key)
    every_value = json.dumps(list(ApiKey.objects.values()), default=str)
    assert tenant.api_key not in every_value


def test_authentication_sends_only_the_hash_to_the_database():
    # The lookup both halves of the API make on a cache miss (the edge sends the same statement).
    tenant = make_tenant("queries")
    with CaptureQueriesContext(connections["default"]) as queries:
        assert cached_tenant_for_api_key(tenant.api_key) is not None
    sql = " ".join(q["sql"] for q in queries.captured_queries)
    assert hashlib.sha256(tenant.api_key.encode()).hexdigest() in sql
    assert tenant.api_key not in sql


def test_create_tenant_shows_the_key_once_and_stores_only_its_hash():
    out = io.StringIO()
    call_command("create_tenant", "cli-tenant", "--json", stdout=out)
    printed = json.loads(out.getvalue())
    tenant = Tenant.objects.get(id=printed["tenant_id"])
    assert ApiKey.objects.get(tenant=tenant).key_hash == hashlib.sha256(printed["api_key"].encode()).hexdigest()
    client = api_client(HTTP_AUTHORIZATION=f"Bearer {printed['api_key']}")
    assert client.get(f"/api/v1/writes/{uuid.uuid4()}").status_code == 200


@pytest.fixture
def staff_client() -> Client:
    user = User.objects.create_superuser("admin", "admin@example.com", "pw-for-tests-only")
    client = Client()
    client.force_login(user)
    return client


def test_admin_shows_a_new_key_once_and_revoking_it_takes_effect_at_once(staff_client):
    tenant = make_tenant("admin-keys")
    response = staff_client.post(
        "/admin/writes/apikey/add/", {"tenant": str(tenant.tenant.id), "label": "from admin"}, follow=True
    )
    assert response.status_code == 200
    secret = response.context["secret"]  # shown on the answer itself (never in a message: a cookie)
    assert secret in response.content.decode()
    assert not [m for m in response.context["messages"] if secret in str(m)]
    client = api_client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get(f"/api/v1/writes/{uuid.uuid4()}").status_code == 200

    api_key = ApiKey.objects.get(label="from admin")
    for page in ["/admin/writes/apikey/", f"/admin/writes/apikey/{api_key.pk}/change/"]:
        assert secret not in staff_client.get(page).content.decode()

    staff_client.post("/admin/writes/apikey/", {"action": "revoke", "_selected_action": [str(api_key.pk)]})
    response = client.get(f"/api/v1/writes/{uuid.uuid4()}")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_api_keys_never_reach_the_logs(caplog):
    tenant = make_tenant("quiet-logs")
    wrong = tenant.api_key[:-4] + "XXXX"
    with caplog.at_level(logging.DEBUG):
        tenant.post_json("/api/v1/events", {"name": "x"})
        tenant.post_json("/api/v1/events", {"name": ""})  # 400, logged as a bad request
        api_client(HTTP_AUTHORIZATION=f"Bearer {wrong}").get(f"/api/v1/writes/{uuid.uuid4()}")  # 401, logged
        api_client(HTTP_AUTHORIZATION=f"Bearer {wrong}").get("/api/v1/nowhere")
    assert caplog.records, "the requests above log warnings; if nothing was captured the test proves nothing"
    assert tenant.api_key not in caplog.text
    assert wrong not in caplog.text


@pytest.mark.parametrize("path", ["/admin/", "/admin/writes/apikey/", "/admin/writes/tenant/"])
def test_admin_requires_a_staff_login(path):
    anonymous = Client().get(path)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/admin/login/")
    plain = Client()
    plain.force_login(User.objects.create_user("someone", password="pw-for-tests-only"))
    assert plain.get(path).status_code == 302
    staff = Client()
    staff.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw-for-tests-only"))
    assert staff.get(path).status_code == 200


@pytest.mark.parametrize(
    ("environment", "complaint"),
    [
        ({"ALLOWED_HOSTS": "api.example.com"}, "SECRET_KEY"),
        ({"SECRET_KEY": "s" * 50}, "ALLOWED_HOSTS"),
        ({"SECRET_KEY": "s" * 50, "ALLOWED_HOSTS": "api.example.com", "DEBUG": "1"}, "DEBUG"),
        ({"SECRET_KEY": " ", "ALLOWED_HOSTS": "api.example.com"}, "SECRET_KEY"),
    ],
)
def test_production_settings_refuse_to_start(monkeypatch, environment, complaint):
    for name in ["SECRET_KEY", "ALLOWED_HOSTS", "DEBUG"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ImproperlyConfigured, match=complaint):
        runpy.run_module("config.production")


def test_production_settings_start_with_secrets_and_hosts(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "s" * 50)
    monkeypatch.setenv("ALLOWED_HOSTS", "api.example.com")
    monkeypatch.delenv("DEBUG", raising=False)
    production = runpy.run_module("config.production")
    assert production["DEBUG"] is False
    assert production["ALLOWED_HOSTS"] == ["api.example.com"]
