"""Bounded reads and bounded conversations: stats pages, a member cap the API and the projection hold."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from readmodels.models import ChatConversation, ChatInbox
from readmodels.projector import project_shard
from tests.conftest import ALL_DATABASES, make_tenant
from tests.readmodels.helpers import apply_events
from writes.apply import apply_batch

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

DAY = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime.now(UTC).isoformat()


def test_stats_pages_every_bucket_exactly_once_with_a_limit():
    tenant = make_tenant("stats-pages")
    events = [(f"name-{n}", DAY + timedelta(hours=h)) for n in range(3) for h in range(4)]
    apply_events(tenant.shard, tenant.tenant.id, events)
    project_shard(tenant.shard)
    seen: list[tuple[str, str]] = []
    params: dict[str, Any] = {"start": "2026-03-01", "end": "2026-03-02", "limit": 5}
    for _ in range(10):
        response = tenant.get("/api/v1/stats/events", **params)
        assert response.status_code == 200, response.content
        body = response.json()
        assert len(body["buckets"]) <= 5
        seen.extend((b["name"], b["start"]) for b in body["buckets"])
        if not body["has_more"]:
            assert body["next_after"] is None
            break
        params["after"] = body["next_after"]
    assert len(seen) == 12
    assert len(set(seen)) == 12


@pytest.mark.parametrize("after", ["x", "1:" + "n" * 201, "999999999999:a", "-1:a", "²:a", "1:\x00"])
def test_stats_refuse_a_bad_page_cursor_with_400(after):
    tenant = make_tenant("stats-bad-after")
    response = tenant.get("/api/v1/stats/events", after=after)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"][0]["field"] == "after"


def members_group(tenant_id: uuid.UUID, conversation_id: str, user_ids: list[str]) -> list[Any]:
    row = [str(uuid.uuid4()), conversation_id, json.dumps({"user_ids": user_ids}), NOW]
    return [str(tenant_id), "member", NOW, [row]]


def message_group(tenant_id: uuid.UUID, conversation_id: str, sender: str) -> list[Any]:
    row = [str(uuid.uuid4()), conversation_id, json.dumps({"sender_id": sender, "body": "hi"}), NOW]
    return [str(tenant_id), "message", NOW, [row]]


def test_chat_projection_holds_the_member_cap_for_added_members_and_senders(settings):
    settings.CHAT_MAX_MEMBERS = 3
    tenant = make_tenant("chat-cap")
    tenant_id = tenant.tenant.id
    apply_batch(
        shard=tenant.shard,
        groups=[members_group(tenant_id, "c1", ["a", "b"]), message_group(tenant_id, "c1", "c")],
    )
    apply_batch(
        shard=tenant.shard,
        groups=[members_group(tenant_id, "c1", ["d", "e"]), message_group(tenant_id, "c1", "f")],
    )
    project_shard(tenant.shard)
    members = set(ChatInbox.objects.using(tenant.shard).filter(tenant_id=tenant_id).values_list("user_id", flat=True))
    assert members == {"a", "b", "c"}
    summary = ChatConversation.objects.using(tenant.shard).get(tenant_id=tenant_id, conversation_id="c1")
    assert (summary.member_count, summary.message_count) == (3, 2)  # f's message is kept, f is not a member


def test_adding_members_past_the_cap_answers_409(settings):
    settings.CHAT_MAX_MEMBERS = 3
    tenant = make_tenant("chat-cap-api")
    too_many = tenant.post_json("/api/v1/conversations/c1/members", {"user_ids": ["a", "b", "c", "d"]})
    assert too_many.status_code == 409, too_many.content
    assert too_many.json()["error"]["code"] == "too_many_members"
    apply_batch(shard=tenant.shard, groups=[members_group(tenant.tenant.id, "c1", ["a", "b"])])
    project_shard(tenant.shard)
    again = tenant.post_json("/api/v1/conversations/c1/members", {"user_ids": ["a", "x", "y"]})
    assert again.status_code == 409, again.content  # a is a member already: 2 others + 3 > 3
    fits = tenant.post_json("/api/v1/conversations/c1/members", {"user_ids": ["a", "b", "x"]})
    assert fits.status_code == 202, fits.content


def read_group(tenant_id: uuid.UUID, conversation_id: str, user_id: str, up_to: int) -> list[Any]:
    row = [str(uuid.uuid4()), conversation_id, json.dumps({"user_id": user_id, "up_to": up_to}), NOW]
    return [str(tenant_id), "read", NOW, [row]]


def test_members_are_those_added_senders_and_readers_as_the_readme_says():
    tenant = make_tenant("chat-membership")
    tenant_id = tenant.tenant.id
    apply_batch(
        shard=tenant.shard,
        groups=[
            members_group(tenant_id, "c1", ["added"]),
            message_group(tenant_id, "c1", "sender"),
            message_group(tenant_id, "c1", "sender"),
            read_group(tenant_id, "c1", "reader", 1),
        ],
    )
    project_shard(tenant.shard)
    inboxes = {i.user_id: i for i in ChatInbox.objects.using(tenant.shard).filter(tenant_id=tenant_id)}
    assert set(inboxes) == {"added", "sender", "reader"}
    assert (inboxes["reader"].last_read_seq, inboxes["reader"].unread_count) == (1, 1)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "`…/read` by a non-member makes them a member" in readme
