"""The chat and ledger HTTP contract: validation limits (400 listing each bad field), synchronous
accounts (201 / 200 / 409), and tenant isolation (another tenant's key gets 404 on every read)."""

from __future__ import annotations

import uuid

import pytest

from api.openapi import DOCUMENTED
from readmodels.projector import project_shard
from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from writes.apply import apply_batch

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


def details(response) -> list[tuple[int | None, str]]:
    assert response.status_code == 400, response.content
    return [(d.get("index"), d["field"]) for d in response.json()["error"]["details"]]


def create_account(tenant: TenantHandle, account_id: str, currency: str = "EUR", *, no_overdraft: bool = False):
    return tenant.post_json(
        "/api/v1/ledger/accounts", {"id": account_id, "currency": currency, "no_overdraft": no_overdraft}
    )


def test_messages_are_accepted_one_or_in_a_batch():
    tenant = make_tenant("chatty")
    one = tenant.post_json("/api/v1/conversations/room-1/messages", {"sender_id": "ann", "body": "hi"})
    assert one.status_code == 202
    assert one["Location"] == f"/api/v1/writes/{one.json()['ids'][0]}"
    batch = tenant.post_json(
        "/api/v1/conversations/room-1/messages", {"batch": [{"sender_id": "ann", "body": "é" * 8192}] * 3}
    )
    assert batch.status_code == 202
    assert batch.json()["accepted"] == 3
    assert tenant.post_json("/api/v1/conversations/room-1/members", {"user_ids": ["a", "b"]}).status_code == 202
    assert tenant.post_json("/api/v1/conversations/room-1/read", {"user_id": "a", "up_to": 3}).status_code == 202


def test_chat_writes_enforce_the_size_id_and_nul_limits():
    tenant = make_tenant("chatty")
    path = "/api/v1/conversations/room-1/messages"
    # 16 KiB of UTF-8: 16,385 ASCII characters are too many, and so are 8,193 two-byte ones.
    assert details(tenant.post_json(path, {"batch": [{"sender_id": "a", "body": "x" * 16_385}]})) == [(0, "body")]
    assert details(tenant.post_json(path, {"batch": [{"sender_id": "a", "body": "é" * 8193}]})) == [(0, "body")]
    assert details(tenant.post_json(path, {"sender_id": "a" * 201, "body": "hi"})) == [(None, "sender_id")]
    assert details(tenant.post_json(path, {"sender_id": "ann", "body": "a\u0000b"})) == [(None, "body")]
    assert details(tenant.post_json(path, {"sender_id": "ann", "body": ""})) == [(None, "body")]
    assert details(
        tenant.post_json(f"/api/v1/conversations/{'c' * 201}/messages", {"sender_id": "a", "body": "b"})
    ) == [(None, "conversation_id")]
    members = "/api/v1/conversations/room-1/members"
    assert details(tenant.post_json(members, {"user_ids": []})) == [(None, "user_ids")]
    assert details(tenant.post_json(members, {"user_ids": ["ok", "x" * 201]})) == [(None, "user_ids[1]")]
    read = "/api/v1/conversations/room-1/read"
    assert details(tenant.post_json(read, {"user_id": "ann", "up_to": -1})) == [(None, "up_to")]
    assert details(tenant.post_json(read, {"user_id": "ann"})) == [(None, "up_to")]


def test_accounts_are_created_once_idempotent_and_conflict_with_other_attributes():
    tenant = make_tenant("payer")
    created = create_account(tenant, "wallet", no_overdraft=True)
    assert created.status_code == 201, created.content
    assert created.json()["balance"] == 0
    assert created.json()["consistency"] == "strong"
    again = create_account(tenant, "wallet", no_overdraft=True)
    assert again.status_code == 200
    assert again.json()["id"] == "wallet"
    conflict = create_account(tenant, "wallet", "USD", no_overdraft=True)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "conflict"
    assert details(create_account(tenant, "bad", "EURO")) == [(None, "currency")]
    assert details(create_account(tenant, "bad", "ABC")) == [(None, "currency")]
    assert details(create_account(tenant, "a/b")) == [(None, "id")]
    assert details(tenant.post_json("/api/v1/ledger/accounts", {"batch": [{"id": "x", "currency": "EUR"}]})) == [
        (None, "batch")
    ]


def test_transfers_are_validated_against_the_tenants_accounts_at_intake():
    tenant = make_tenant("payer")
    create_account(tenant, "equity")
    create_account(tenant, "wallet", no_overdraft=True)
    create_account(tenant, "dollars", "USD")

    def item(**changes: object) -> dict[str, object]:
        return {"id": str(uuid.uuid4()), "debit_account": "equity", "credit_account": "wallet", "amount": 5,
                "currency": "EUR", **changes}  # fmt: skip

    # Shape errors are reported first (nothing is looked up for a malformed request) ...
    malformed = [item(), item(amount=0), item(amount=2**63), item(currency="EURO"), {"debit_account": "equity"}]
    assert details(tenant.post_json("/api/v1/ledger/transfers", {"batch": malformed})) == [
        (1, "amount"),
        (2, "amount"),
        (3, "currency"),
        (4, "id"),
    ]
    # ... then every transfer is checked against the accounts.
    batch = [item(), item(debit_account="nobody"), item(credit_account="dollars"), item(credit_account="equity"),
             item(currency="XYZ")]  # fmt: skip
    assert details(tenant.post_json("/api/v1/ledger/transfers", {"batch": batch})) == [
        (1, "debit_account"),
        (2, "credit_account"),
        (3, "credit_account"),
        (4, "currency"),
        (4, "debit_account"),
        (4, "credit_account"),
    ]
    accepted = tenant.post_json("/api/v1/ledger/transfers", {"batch": [item(amount=2**63 - 1), item()]})
    assert accepted.status_code == 202
    # Accounts are the tenant's own: another tenant's "equity" is unknown here.
    other = make_tenant("other")
    assert details(other.post_json("/api/v1/ledger/transfers", item())) == [
        (None, "debit_account"),
        (None, "credit_account"),
    ]


def test_every_new_read_endpoint_answers_404_to_another_tenants_key():
    owner = make_tenant("owner")
    stranger = make_tenant("stranger", shard=owner.shard)  # same shard: only the tenant filter separates them
    create_account(owner, "wallet", no_overdraft=True)
    create_account(owner, "equity")
    now = "2026-05-01T12:00:00+00:00"
    rows = [[str(uuid.uuid4()), "room-1", '{"sender_id": "ann", "body": "secret"}', now]]
    apply_batch(shard=owner.shard, groups=[[str(owner.tenant.id), "message", now, rows]])
    project_shard(owner.shard)
    paths = [
        "/api/v1/conversations/room-1",
        "/api/v1/conversations/room-1/messages",
        "/api/v1/users/ann/inbox",
        "/api/v1/ledger/accounts/wallet",
        "/api/v1/ledger/accounts/equity",
        f"/api/v1/writes/{rows[0][0]}",
    ]
    for path in paths:
        assert owner.get(path).status_code == 200, path
        response = stranger.get(path)
        expected = 200 if path.startswith("/api/v1/writes/") else 404
        assert response.status_code == expected, path
        if expected == 200:
            assert response.json()["status"] == "pending"  # nothing of the owner's shows
        else:
            assert response.json()["error"]["code"] == "not_found"
    assert owner.get("/api/v1/conversations/room-1/messages").json()["messages"][0]["body"] == "secret"


def test_read_endpoints_reject_bad_cursors_with_400():
    tenant = make_tenant("reader")
    for query in ({"after": "x"}, {"after": "-1"}, {"limit": "0"}, {"limit": "201"}):
        assert tenant.get("/api/v1/conversations/room-1/messages", **query).status_code == 400, query


def test_openapi_documents_the_chat_and_ledger_bodies():
    names = {struct.__name__ for struct in DOCUMENTED}
    assert {"MessageIn", "MembersIn", "ReadIn", "TransferIn", "AccountIn", "MessagePage", "AccountOut"} <= names
    schema = make_tenant("docs").client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    bodies = {
        "/api/v1/events": "EventIn",
        "/api/v1/conversations/{conversation_id}/messages": "MessageIn",
        "/api/v1/conversations/{conversation_id}/members": "MembersIn",
        "/api/v1/conversations/{conversation_id}/read": "ReadIn",
        "/api/v1/ledger/transfers": "TransferIn",
    }
    for path, item in bodies.items():
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["oneOf"][0] == {"$ref": f"#/components/schemas/{item}"}, path
    account = paths["/api/v1/ledger/accounts"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert account == {"$ref": "#/components/schemas/AccountIn"}
    assert set(paths["/api/v1/ledger/accounts"]["post"]["responses"]) >= {"200", "201", "409"}
