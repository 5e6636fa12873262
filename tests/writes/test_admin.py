"""Django admin: staff only; tenants, keys shown once, and each shard's log, read-only."""

from __future__ import annotations

import re
import uuid

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.conftest import ALL_DATABASES, make_tenant
from writes.apply import apply_batch
from writes.models import ApiKey, Tenant
from writes.services import hash_api_key, tenant_for_api_key

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


@pytest.fixture
def staff() -> Client:
    User.objects.create_superuser("admin", "admin@example.com", "pw-for-tests")
    client = Client()
    client.login(username="admin", password="pw-for-tests")
    return client


def test_admin_requires_a_staff_login():
    response = Client().get("/admin/writes/tenant/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_admin_creates_a_tenant_on_its_logical_shard(staff):
    response = staff.post("/admin/writes/tenant/add/", {"name": "from-admin"}, follow=True)
    assert response.status_code == 200
    tenant = Tenant.objects.get(name="from-admin")
    assert 0 <= tenant.logical_shard < 256
    assert "from-admin" in staff.get("/admin/writes/tenant/").content.decode()


def test_admin_shows_a_new_api_key_once_and_stores_only_its_hash(staff):
    tenant = make_tenant("keyed").tenant
    response = staff.post("/admin/writes/apikey/add/", {"tenant": tenant.pk, "label": "ci"}, follow=True)
    page = response.content.decode()
    secret = re.search(r"(wk_[A-Za-z0-9_-]{20,})", page)
    assert secret, "the new key is shown after creation"
    stored = ApiKey.objects.get(tenant=tenant, label="ci")
    assert stored.key_hash == hash_api_key(secret.group(1))
    assert secret.group(1) not in stored.key_hash
    assert tenant_for_api_key(secret.group(1)) is not None
    change_page = staff.get(f"/admin/writes/apikey/{stored.pk}/change/").content.decode()
    assert secret.group(1) not in change_page


def test_admin_lists_the_write_log_of_the_chosen_shard_read_only(staff):
    tenant_id = uuid.uuid4()
    group = [
        str(tenant_id),
        "event",
        "2026-05-01T00:00:00+00:00",
        [[str(uuid.uuid4()), "on-shard-1", "{}", "2026-05-01T00:00:00+00:00"]],
    ]
    apply_batch(shard="shard_1", groups=[group])
    on_1 = staff.get("/admin/writes/writelog/", {"shard": "shard_1"}).content.decode()
    on_0 = staff.get("/admin/writes/writelog/", {"shard": "shard_0"}).content.decode()
    assert "on-shard-1" in on_1
    assert "on-shard-1" not in on_0
    assert staff.get("/admin/writes/writelog/add/").status_code == 403
    assert staff.get("/admin/writes/rejectedwrite/", {"shard": "shard_0"}).status_code == 200
