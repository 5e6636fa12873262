"""The chat projection against a real shard: exact unread counts per member, read marks, late
joiners, messages in order, and a repair that agrees with it (and fixes a drifted row)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connections

from readmodels.models import ChatConversation, ChatInbox, ChatMessage, RepairRun
from readmodels.projections.chat import ChatProjection
from readmodels.projections.checkpoints import current_checkpoint
from readmodels.projector import project_shard, project_slice
from readmodels.repair import repair_projection
from readmodels.selectors.chat import user_inbox
from tests.conftest import ALL_DATABASES
from writes.apply import apply_batch

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)

SHARD = "shard_1"
START = datetime(2026, 5, 1, 12, tzinfo=UTC)


class Chat:
    """Writes to one conversation, applied straight to the shard (the API is tested elsewhere)."""

    def __init__(self) -> None:
        self.tenant_id = str(uuid.uuid4())
        self.conversation_id = f"room-{uuid.uuid4().hex[:6]}"
        self.clock = START
        self.pending: list[list[object]] = []

    def write(self, kind: str, payload: dict[str, object]) -> None:
        self.clock += timedelta(seconds=1)
        row = [str(uuid.uuid4()), self.conversation_id, json.dumps(payload), self.clock.isoformat()]
        self.pending.append([self.tenant_id, kind, self.clock.isoformat(), [row]])

    def flush(self) -> None:
        """Apply the writes so far, in order, as one batch."""
        apply_batch(shard=SHARD, groups=self.pending)
        self.pending = []

    def say(self, sender: str, body: str) -> None:
        self.write("message", {"sender_id": sender, "body": body})

    def add(self, *users: str) -> None:
        self.write("member", {"user_ids": list(users)})

    def read(self, user: str, up_to: int) -> None:
        self.write("read", {"user_id": user, "up_to": up_to})

    def unread(self) -> dict[str, int]:
        self.flush()
        rows = ChatInbox.objects.using(SHARD).filter(tenant_id=self.tenant_id, conversation_id=self.conversation_id)
        return {row.user_id: row.unread_count for row in rows}


def test_chat_projection_counts_unread_per_member_and_a_read_clears_it():
    chat = Chat()
    chat.add("ann", "bob", "cid")
    for n in range(6):
        chat.say(["ann", "bob", "dan"][n % 3], f"hello {n}")  # dan is not added: sending makes him a member
    chat.flush()
    project_shard(SHARD)
    # dan joined with his first message (the 3rd), so the two before it are not his to read.
    assert chat.unread() == {"ann": 4, "bob": 4, "cid": 6, "dan": 2}
    chat.read("cid", 6)
    chat.read("ann", 3)
    chat.add("eve")
    chat.say("bob", "last")
    chat.flush()
    project_shard(SHARD)
    assert chat.unread() == {"ann": 3, "bob": 4, "cid": 1, "dan": 3, "eve": 1}
    summary = ChatConversation.objects.using(SHARD).get(tenant_id=chat.tenant_id)
    assert (summary.message_count, summary.member_count, summary.last_sender_id, summary.preview) == (
        7,
        5,
        "bob",
        "last",
    )
    bodies = ChatMessage.objects.using(SHARD).filter(tenant_id=chat.tenant_id).order_by("seq")
    assert [(m.seq, m.body) for m in bodies] == [(n + 1, f"hello {n}") for n in range(6)] + [(7, "last")]


def test_chat_projection_agrees_with_a_naive_model_and_a_replay_whatever_the_slicing():
    rng = random.Random(7)
    chat = Chat()
    users = [f"u{n}" for n in range(8)]
    # The naive model: every message kept, unread counted message by message at the end.
    senders: list[str] = []
    marks: dict[str, int] = {}
    chat.add(*users[:4])
    marks.update(dict.fromkeys(users[:4], 0))
    for _ in range(150):
        roll, user = rng.random(), rng.choice(users)
        if roll < 0.75:
            chat.say(user, "x" * rng.randint(1, 300))
            marks.setdefault(user, len(senders))
            senders.append(user)
        elif roll < 0.9:
            up_to = rng.randint(0, len(senders) + 3)  # also beyond the last message
            chat.read(user, up_to)
            marks[user] = max(marks.get(user, 0), min(up_to, len(senders)))
        else:
            chat.add(user)
            marks.setdefault(user, len(senders))
    chat.flush()
    projection = ChatProjection()
    while project_slice(SHARD, projection, slice_positions=rng.randint(1, 20)):
        pass
    expected = {u: sum(1 for s in senders[mark:] if s != u) for u, mark in marks.items()}
    assert chat.unread() == expected
    with connections[SHARD].cursor() as cursor:
        scan = projection.find_drift(cursor, upto=current_checkpoint(cursor, projection.name), since=LONG_AGO)
    assert scan.rows_checked >= 1
    assert scan.drift == []


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_repair_finds_and_fixes_drifted_chat_unread_counts_and_summaries():
    chat = Chat()
    chat.add("ann", "bob")
    chat.say("ann", "one")
    chat.say("ann", "two")
    chat.flush()
    project_shard(SHARD)
    ChatInbox.objects.using(SHARD).filter(tenant_id=chat.tenant_id, user_id="bob").update(unread_count=40)
    ChatConversation.objects.using(SHARD).filter(tenant_id=chat.tenant_id).update(message_count=9)
    with connections[SHARD].cursor() as cursor:
        cursor.execute(
            "INSERT INTO chat_inboxes (tenant_id, conversation_id, user_id, last_read_seq, unread_count) "
            "VALUES (%s, %s, 'ghost', 0, 3)",
            [chat.tenant_id, chat.conversation_id],
        )
    first = repair_projection(shard=SHARD, projection=ChatProjection(), since=LONG_AGO)
    assert (first.outcome, first.drift_found, first.drift_fixed) == ("ok", 3, 3)
    assert chat.unread() == {"ann": 0, "bob": 2}
    assert ChatConversation.objects.using(SHARD).get(tenant_id=chat.tenant_id).message_count == 2
    assert not ChatInbox.objects.using(SHARD).filter(tenant_id=chat.tenant_id, user_id="ghost").exists()
    assert RepairRun.objects.using(SHARD).filter(projection="chat", drift_found=3, drift_fixed=3).exists()
    assert repair_projection(shard=SHARD, projection=ChatProjection(), since=LONG_AGO).drift_found == 0


def test_chat_projection_fans_out_a_slice_with_a_fixed_number_of_statements():
    tenant_id, now = str(uuid.uuid4()), START.isoformat()
    members = [f"user-{n}" for n in range(300)]
    joined = [[str(uuid.uuid4()), "big-room", json.dumps({"user_ids": members}), now]]
    apply_batch(shard=SHARD, groups=[[tenant_id, "member", now, joined]])
    project_shard(SHARD)
    statements: list[str] = []

    def count(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    for burst in range(2):  # the first burst after the join, then one more: the same statements each
        said = [
            [str(uuid.uuid4()), "big-room", json.dumps({"sender_id": members[n % 3], "body": f"{burst}-{n}"}), now]
            for n in range(300)
        ]
        apply_batch(shard=SHARD, groups=[[tenant_id, "message", now, said]])
        statements.clear()
        with connections[SHARD].execute_wrapper(count):
            while project_slice(SHARD, ChatProjection()):
                pass
        # 300 messages x 300 members: a handful of set-based statements, not 90,000.
        assert len(statements) < 20
    unread = dict(ChatInbox.objects.using(SHARD).filter(tenant_id=tenant_id).values_list("user_id", "unread_count"))
    assert len(unread) == 300
    assert unread["user-0"] == 600 - 200
    assert unread["user-299"] == 600


def test_inbox_lists_recent_conversations_first_and_silent_ones_last():
    quiet, old, recent = Chat(), Chat(), Chat()
    for chat in (old, recent, quiet):
        chat.tenant_id = quiet.tenant_id
    old.say("bob", "earlier")
    old.flush()
    quiet.add("ann")
    quiet.flush()
    recent.clock += timedelta(hours=1)
    recent.say("bob", "later")
    recent.add("ann")
    recent.flush()
    old.add("ann")
    old.flush()
    project_shard(SHARD)
    inbox = user_inbox(shard=SHARD, tenant_id=uuid.UUID(quiet.tenant_id), user_id="ann", limit=10)
    assert [row["conversation_id"] for row in inbox] == [
        recent.conversation_id,
        old.conversation_id,
        quiet.conversation_id,
    ]
    assert [row["preview"] for row in inbox] == ["later", "earlier", ""]
