"""End to end, chat: messages from several senders to a conversation with many members give exact
unread counts per member, a read mark clears one, and pagination returns every message exactly once,
also while more messages are being applied."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from celery import current_app
from django.db import connections

from readmodels.tasks import PROJECT_TASK
from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from tests.writes.test_e2e_events import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

MEMBERS = [f"user-{n}" for n in range(30)]
SENDERS = MEMBERS[:5]
FIRST_WAVE = 300
SECOND_WAVE = 100
PER_REQUEST = 10
ROOM = "/api/v1/conversations/room-42"


def post_messages(tenant: TenantHandle, numbers: list[int], ids: dict[int, str], failures: list[str]) -> None:
    try:
        for start in range(0, len(numbers), PER_REQUEST):
            chunk = numbers[start : start + PER_REQUEST]
            batch = [{"sender_id": SENDERS[n % len(SENDERS)], "body": f"message {n}"} for n in chunk]
            response = tenant.post_json(f"{ROOM}/messages", {"batch": batch})
            if response.status_code != 202:
                failures.append(f"{response.status_code}: {response.content!r}")
                continue
            ids.update(zip(chunk, response.json()["ids"], strict=True))
    except Exception as exc:  # a thread's exception would otherwise vanish
        failures.append(repr(exc))
    finally:
        connections.close_all()


def post_concurrently(tenant: TenantHandle, numbers: list[int], ids: dict[int, str], failures: list[str]) -> None:
    clients = 4
    threads = [
        threading.Thread(target=post_messages, args=(tenant, numbers[n::clients], ids, failures))
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def project_soon(tenant: TenantHandle) -> None:
    """Stands in for beat's ``project_all``: the projector trigger after applied batches is debounced,
    so the last batches of a burst wait for the next beat tick, and no beat runs in the tests."""
    current_app.send_task(PROJECT_TASK, args=[tenant.shard], ignore_result=True)


def message_count(tenant: TenantHandle) -> int:
    project_soon(tenant)
    response = tenant.get(ROOM)
    return response.json()["message_count"] if response.status_code == 200 else 0


def unread_of(tenant: TenantHandle, user_id: str) -> int:
    inbox = tenant.get(f"/api/v1/users/{user_id}/inbox").json()
    [entry] = [c for c in inbox["conversations"] if c["conversation_id"] == "room-42"]
    return int(entry["unread_count"])


def test_chat_unread_counts_read_marks_and_pagination_end_to_end(live_worker):
    tenant = make_tenant("chat")
    added = tenant.post_json(f"{ROOM}/members", {"user_ids": MEMBERS})
    assert tenant.get(added["Location"], wait="20").json()["status"] == "applied"

    ids: dict[int, str] = {}
    failures: list[str] = []
    post_concurrently(tenant, list(range(FIRST_WAVE)), ids, failures)
    assert failures == []
    wait_until(lambda: message_count(tenant) == FIRST_WAVE, timeout=60)

    sent_by = Counter(SENDERS[n % len(SENDERS)] for n in range(FIRST_WAVE))
    for user_id in MEMBERS:
        assert unread_of(tenant, user_id) == FIRST_WAVE - sent_by[user_id], user_id
    summary = tenant.get(ROOM).json()
    assert summary["member_count"] == len(MEMBERS)
    assert summary["lag_seconds"] >= 0
    assert summary["as_of"]["position"] > 0

    # A read up to the last message clears the count; a read of part of it leaves the rest.
    reader, partial = MEMBERS[-1], MEMBERS[-2]
    tenant.post_json(f"{ROOM}/read", {"user_id": reader, "up_to": FIRST_WAVE})
    last = tenant.post_json(f"{ROOM}/read", {"user_id": partial, "up_to": FIRST_WAVE - 40})
    position = tenant.get(last["Location"], wait="20").json()["position"]
    project_soon(tenant)
    assert tenant.get(ROOM, min_position=str(position)).json()["as_of"]["position"] >= position
    assert unread_of(tenant, reader) == 0
    assert unread_of(tenant, partial) == 40

    # Page through while a second wave is being applied: every message once, in order.
    writer = threading.Thread(
        target=post_concurrently, args=(tenant, list(range(FIRST_WAVE, FIRST_WAVE + SECOND_WAVE)), ids, failures)
    )
    writer.start()
    seen: list[dict[str, object]] = []
    after = 0
    deadline = time.monotonic() + 60
    while len(seen) < FIRST_WAVE + SECOND_WAVE and time.monotonic() < deadline:
        page = tenant.get(f"{ROOM}/messages", after=str(after), limit="37").json()
        seen.extend(page["messages"])
        after = page["next_after"]
        if not page["has_more"]:  # caught up with the read model: let it advance
            project_soon(tenant)
            time.sleep(0.1)
    writer.join()
    assert failures == []
    assert [m["seq"] for m in seen] == list(range(1, FIRST_WAVE + SECOND_WAVE + 1))
    assert sorted(str(m["id"]) for m in seen) == sorted(ids.values())
    assert unread_of(tenant, reader) == SECOND_WAVE - Counter(SENDERS[n % 5] for n in range(FIRST_WAVE, 400))[reader]
