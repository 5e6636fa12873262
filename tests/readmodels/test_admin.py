"""Admin pages of the chat and ledger tables: listed per shard, read-only."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import User
from django.test import Client

from readmodels.projector import project_shard
from tests.conftest import ALL_DATABASES
from tests.writes.test_ledger_apply import group, transfer
from writes.apply import apply_batch
from writes.ledger import account_create
from writes.routing import TenantContext

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

PAGES = ["chatconversation", "chatmessage", "chatinbox", "ledgerbalance"]


def test_admin_lists_chat_and_ledger_tables_per_shard_and_allows_no_changes():
    tenant = TenantContext(tenant_id=uuid.uuid4(), shard="shard_1")
    account_create(tenant=tenant, account_id="wallet-admin", currency="EUR", no_overdraft=True)
    account_create(tenant=tenant, account_id="equity-admin", currency="EUR", no_overdraft=False)
    apply_batch(shard="shard_1", groups=[group(tenant, [transfer("equity-admin", "wallet-admin", 3)])])
    now = "2026-05-01T12:00:00+00:00"
    message = [str(uuid.uuid4()), "room-admin", '{"sender_id": "ann", "body": "hello"}', now]
    apply_batch(shard="shard_1", groups=[[str(tenant.tenant_id), "message", now, [message]]])
    project_shard("shard_1")

    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    pages = [f"/admin/readmodels/{name}/" for name in PAGES] + ["/admin/writes/ledgeraccount/"]
    for page in pages:
        response = client.get(page, {"shard": "shard_1"})
        assert response.status_code == 200, page
        assert "room-admin" in response.content.decode() or "wallet-admin" in response.content.decode(), page
        assert client.get(f"{page}add/").status_code == 403, page
