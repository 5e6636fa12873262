"""Chat read models from ``message``, ``member`` and ``read`` writes: messages in order, conversation
summaries and members' inboxes with unread counts, and their repair.

A slice is folded in memory per conversation, then written with one statement per table: one row per
(member, conversation) per slice, never one statement per message x member. A member's unread count is
the number of messages from others with a ``seq`` above their read mark.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings

from readmodels.projections.base import DriftScan, LogRow
from readmodels.projections.checkpoints import (
    current_checkpoint,
    first_position_since,
    payload_of,
)

MESSAGE_KIND = "message"
MEMBER_KIND = "member"
READ_KIND = "read"
CHAT_KINDS = frozenset({MESSAGE_KIND, MEMBER_KIND, READ_KIND})
PREVIEW_CHARS = 100

ConversationKey = tuple[str, str]  # (tenant_id, conversation_id)
InboxKey = tuple[str, str, str]  # (tenant_id, conversation_id, user_id)


@dataclass
class Summary:
    message_count: int = 0
    member_count: int = 0
    last_message_at: datetime | None = None
    last_sender_id: str = ""
    preview: str = ""


@dataclass(frozen=True, slots=True)
class InboxRow:
    last_read_seq: int
    unread_count: int
    last_message_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewMessage:
    position: int
    seq: int
    write_id: str
    sender_id: str
    body: str
    sent_at: datetime


@dataclass
class ConversationFold:
    """One conversation while a slice is folded into it. ``marks`` holds every member's read mark;
    ``changed`` the members whose mark is new or moved in this slice."""

    summary: Summary
    marks: dict[str, int]
    previous_last_seq: int
    changed: set[str] = field(default_factory=set)
    messages: list[NewMessage] = field(default_factory=list)
    # sender → seqs of their messages in this slice, ascending
    sent: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def join(self, user_id: str, mark: int) -> None:
        # Past the cap nobody joins (in log order, so replay and repair agree): the API refuses adding
        # members past it; a sender or reader past it still writes, without an inbox.
        if user_id not in self.marks and len(self.marks) < settings.CHAT_MAX_MEMBERS:
            self.marks[user_id] = mark
            self.changed.add(user_id)

    def apply(self, row: LogRow) -> None:
        payload = payload_of(row)
        summary = self.summary
        if row.kind == MESSAGE_KIND:
            sender = str(payload["sender_id"])
            body = str(payload["body"])
            seq = summary.message_count + 1
            # A sender becomes a member; their own messages never count as unread for them.
            self.join(sender, summary.message_count)
            summary.message_count = seq
            summary.last_message_at = row.occurred_at
            summary.last_sender_id = sender
            summary.preview = body[:PREVIEW_CHARS]
            self.messages.append(NewMessage(row.position, seq, str(row.write_id), sender, body, row.occurred_at))
            self.sent[sender].append(seq)
        elif row.kind == MEMBER_KIND:
            for user_id in payload["user_ids"]:
                # A member added later starts with everything before them read.
                self.join(str(user_id), summary.message_count)
        elif row.kind == READ_KIND:
            user_id = str(payload["user_id"])
            # A mark beyond the last message means "everything so far", never messages not yet sent.
            mark = min(int(payload["up_to"]), summary.message_count)
            if user_id not in self.marks:
                self.join(user_id, mark)
            elif mark > self.marks[user_id]:
                self.marks[user_id] = mark
                self.changed.add(user_id)
        self.summary.member_count = len(self.marks)

    def unread_in_slice_after(self, user_id: str, mark: int) -> int:
        """Messages from others in this slice with a seq above ``mark``."""
        low = max(mark, self.previous_last_seq)
        total = self.summary.message_count - low
        own = self.sent.get(user_id, [])
        return total - (len(own) - bisect.bisect_right(own, low))


# --- SQL ----------------------------------------------------------------------------------

_LOAD_SUMMARIES = """
SELECT c.tenant_id::text, c.conversation_id, c.message_count, c.member_count, c.last_message_at, c.last_sender_id,
       c.preview
FROM chat_conversations c JOIN unnest(%s::uuid[], %s::text[]) AS k(tenant_id, conversation_id)
  ON c.tenant_id = k.tenant_id AND c.conversation_id = k.conversation_id
"""

_LOAD_MARKS = """
SELECT i.tenant_id::text, i.conversation_id, i.user_id, i.last_read_seq
FROM chat_inboxes i JOIN unnest(%s::uuid[], %s::text[]) AS k(tenant_id, conversation_id)
  ON i.tenant_id = k.tenant_id AND i.conversation_id = k.conversation_id
"""

_LOAD_INBOXES = """
SELECT i.tenant_id::text, i.conversation_id, i.user_id, i.last_read_seq, i.unread_count, i.last_message_at
FROM chat_inboxes i JOIN unnest(%s::uuid[], %s::text[]) AS k(tenant_id, conversation_id)
  ON i.tenant_id = k.tenant_id AND i.conversation_id = k.conversation_id
"""

_INSERT_MESSAGES = """
INSERT INTO chat_messages (position, tenant_id, conversation_id, seq, write_id, sender_id, body, sent_at)
SELECT * FROM unnest(%s::bigint[], %s::uuid[], %s::text[], %s::bigint[], %s::uuid[], %s::text[], %s::text[],
                     %s::timestamptz[])
ON CONFLICT (position) DO NOTHING
"""

_UPSERT_SUMMARIES = """
INSERT INTO chat_conversations (tenant_id, conversation_id, message_count, member_count, last_message_at,
                                last_sender_id, preview)
SELECT * FROM unnest(%s::uuid[], %s::text[], %s::bigint[], %s::int[], %s::timestamptz[], %s::text[], %s::text[])
ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET
    message_count = excluded.message_count, member_count = excluded.member_count,
    last_message_at = excluded.last_message_at, last_sender_id = excluded.last_sender_id, preview = excluded.preview
"""

# Members whose mark did not move: their unread count grows by the slice's messages from others.
_ADD_UNREAD = """
UPDATE chat_inboxes i SET unread_count = i.unread_count + d.delta, last_message_at = d.last_message_at
FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::bigint[], %s::timestamptz[])
     AS d(tenant_id, conversation_id, user_id, delta, last_message_at)
WHERE i.tenant_id = d.tenant_id AND i.conversation_id = d.conversation_id AND i.user_id = d.user_id
"""

# Members who joined or read in this slice: their row is set to its exact new value.
_UPSERT_INBOXES = """
INSERT INTO chat_inboxes (tenant_id, conversation_id, user_id, last_read_seq, unread_count, last_message_at)
SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::timestamptz[])
ON CONFLICT (tenant_id, conversation_id, user_id) DO UPDATE SET
    last_read_seq = excluded.last_read_seq, unread_count = excluded.unread_count,
    last_message_at = excluded.last_message_at
"""

# Unread messages from before this slice, for members whose new mark is below the slice's messages.
_COUNT_OLDER_UNREAD = """
SELECT q.n, count(m.position)
FROM unnest(%s::int[], %s::uuid[], %s::text[], %s::text[], %s::bigint[], %s::bigint[])
     AS q(n, tenant_id, conversation_id, user_id, low, high)
LEFT JOIN chat_messages m ON m.tenant_id = q.tenant_id AND m.conversation_id = q.conversation_id
     AND m.seq > q.low AND m.seq <= q.high AND m.sender_id <> q.user_id
GROUP BY q.n
"""

_DELETE_INBOXES = """
DELETE FROM chat_inboxes i USING unnest(%s::uuid[], %s::text[], %s::text[]) AS d(tenant_id, conversation_id, user_id)
WHERE i.tenant_id = d.tenant_id AND i.conversation_id = d.conversation_id AND i.user_id = d.user_id
"""


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


def _keys_params(keys: Iterable[ConversationKey]) -> list[list[str]]:
    ordered = sorted(keys)
    return [[k[0] for k in ordered], [k[1] for k in ordered]]


def load_folds(cursor: Any, keys: Iterable[ConversationKey]) -> dict[ConversationKey, ConversationFold]:
    """The current read-model state of some conversations, ready to fold a slice into."""
    params = _keys_params(keys)
    folds = {(t, c): ConversationFold(Summary(), {}, 0) for t, c in zip(*params, strict=True)}
    cursor.execute(_LOAD_SUMMARIES, params)
    for tenant_id, conversation_id, count, members, last_at, last_sender, preview in cursor.fetchall():
        fold = folds[(tenant_id, conversation_id)]
        fold.summary = Summary(count, members, last_at, last_sender, preview)
        fold.previous_last_seq = count
    cursor.execute(_LOAD_MARKS, params)
    for tenant_id, conversation_id, user_id, mark in cursor.fetchall():
        folds[(tenant_id, conversation_id)].marks[user_id] = mark
    return folds


class ChatProjection:
    name = "chat"
    kinds = CHAT_KINDS
    tables = ("chat_messages", "chat_conversations", "chat_inboxes")

    def find_drift(self, cursor: Any, *, upto: int, since: datetime) -> DriftScan:
        """Summaries and inboxes of every conversation written to since ``since``, recomputed from the
        log up to ``upto`` and compared with the stored rows."""
        start = first_position_since(cursor, since, upto=upto) - 1
        keys = touched_conversations(cursor, start=start, end=upto)
        expected = expected_chat_state(cursor, keys, end=upto)
        actual = actual_chat_state(cursor, keys)
        checked = len(expected.summaries.keys() | actual.summaries.keys()) + len(
            expected.inboxes.keys() | actual.inboxes.keys()
        )
        return DriftScan(rows_checked=checked, drift=chat_drift(expected, actual))

    def fix_drift(self, cursor: Any, drift: Sequence[Any]) -> int:
        # The fixes set whole values, so they are recomputed here, under the held checkpoint, rather
        # than taken from the scan's older snapshot (the projector may have moved on since).
        keys = {(str(d.key[0]), str(d.key[1])) for d in drift}
        end = current_checkpoint(cursor, self.name)
        return fix_chat_drift(
            cursor, chat_drift(expected_chat_state(cursor, keys, end=end), actual_chat_state(cursor, keys))
        )

    def apply(self, cursor: Any, rows: Sequence[LogRow]) -> None:
        folds = load_folds(cursor, {(str(r.tenant_id), r.key) for r in rows})
        for row in rows:
            folds[(str(row.tenant_id), row.key)].apply(row)

        messages: list[tuple[Any, ...]] = []
        summaries: list[tuple[Any, ...]] = []
        increments: list[tuple[Any, ...]] = []
        exact: dict[InboxKey, list[Any]] = {}
        older: list[tuple[Any, ...]] = []
        for (tenant_id, conversation_id), fold in folds.items():
            s = fold.summary
            summaries.append(
                (
                    tenant_id,
                    conversation_id,
                    s.message_count,
                    s.member_count,
                    s.last_message_at,
                    s.last_sender_id,
                    s.preview,
                )
            )
            for m in fold.messages:
                messages.append(
                    (m.position, tenant_id, conversation_id, m.seq, m.write_id, m.sender_id, m.body, m.sent_at)
                )
            for user_id, mark in fold.marks.items():
                key = (tenant_id, conversation_id, user_id)
                if user_id in fold.changed:
                    exact[key] = [mark, fold.unread_in_slice_after(user_id, mark), s.last_message_at]
                    if mark < fold.previous_last_seq:
                        older.append((len(older), tenant_id, conversation_id, user_id, mark, fold.previous_last_seq))
                elif fold.messages:
                    increments.append((*key, fold.unread_in_slice_after(user_id, mark), s.last_message_at))

        if older:  # rare: a read mark or a join below the messages already projected
            cursor.execute(_COUNT_OLDER_UNREAD, _columns(older, 6))
            for n, count in cursor.fetchall():
                exact[older[n][1:4]][1] += count
        if messages:
            cursor.execute(_INSERT_MESSAGES, _columns(messages, 8))
        cursor.execute(_UPSERT_SUMMARIES, _columns(summaries, 7))
        if increments:
            cursor.execute(_ADD_UNREAD, _columns(increments, 5))
        if exact:
            cursor.execute(_UPSERT_INBOXES, _columns([(*key, *values) for key, values in exact.items()], 6))


# --- Repair: recompute from the log, compare, fix ------------------------------------------

_TOUCHED = """
SELECT DISTINCT tenant_id::text, key FROM write_log
WHERE position > %s AND position <= %s AND kind = ANY(%s)
"""

_HISTORY = """
SELECT l.position, l.tenant_id, l.write_id, l.kind, l.key, l.payload, l.occurred_at, l.received_at, l.applied_at
FROM write_log l JOIN unnest(%s::uuid[], %s::text[]) AS k(tenant_id, conversation_id)
  ON l.tenant_id = k.tenant_id AND l.key = k.conversation_id
WHERE l.position <= %s AND l.kind = ANY(%s)
ORDER BY l.position
"""


@dataclass
class ChatState:
    """Summaries and inbox rows of some conversations: expected (from the log) or actual."""

    summaries: dict[ConversationKey, Summary] = field(default_factory=dict)
    inboxes: dict[InboxKey, InboxRow] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChatDrift:
    table: str
    key: tuple[str, ...]
    expected: Any
    actual: Any


def replay(rows: Iterable[LogRow]) -> ChatState:
    """The summaries and inboxes that a whole history of chat writes gives, computed from scratch: the
    reference the incremental projection is checked against."""
    folds: dict[ConversationKey, ConversationFold] = {}
    for row in rows:
        key = (str(row.tenant_id), row.key)
        folds.setdefault(key, ConversationFold(Summary(), {}, 0)).apply(row)
    state = ChatState()
    for (tenant_id, conversation_id), fold in folds.items():
        state.summaries[(tenant_id, conversation_id)] = fold.summary
        for user_id, mark in fold.marks.items():
            unread = fold.unread_in_slice_after(user_id, mark)
            state.inboxes[(tenant_id, conversation_id, user_id)] = InboxRow(mark, unread, fold.summary.last_message_at)
    return state


def touched_conversations(cursor: Any, *, start: int, end: int) -> set[ConversationKey]:
    cursor.execute(_TOUCHED, [start, end, list(CHAT_KINDS)])
    return {(tenant_id, key) for tenant_id, key in cursor.fetchall()}


def expected_chat_state(cursor: Any, keys: set[ConversationKey], *, end: int) -> ChatState:
    """What the summaries and inboxes of ``keys`` should be once the log is projected up to ``end``.
    Reads each conversation's whole history: the log has no index by key, so this scans it."""
    if not keys:
        return ChatState()
    cursor.execute(_HISTORY, [*_keys_params(keys), end, list(CHAT_KINDS)])
    return replay(LogRow(*values) for values in cursor.fetchall())


def actual_chat_state(cursor: Any, keys: set[ConversationKey]) -> ChatState:
    state = ChatState()
    if not keys:
        return state
    params = _keys_params(keys)
    cursor.execute(_LOAD_SUMMARIES, params)
    for tenant_id, conversation_id, count, members, last_at, last_sender, preview in cursor.fetchall():
        state.summaries[(tenant_id, conversation_id)] = Summary(count, members, last_at, last_sender, preview)
    cursor.execute(_LOAD_INBOXES, params)
    for tenant_id, conversation_id, user_id, mark, unread, last_at in cursor.fetchall():
        state.inboxes[(tenant_id, conversation_id, user_id)] = InboxRow(mark, unread, last_at)
    return state


def chat_drift(expected: ChatState, actual: ChatState) -> list[ChatDrift]:
    drift = [
        ChatDrift("chat_conversations", key, value, actual.summaries.get(key))
        for key, value in expected.summaries.items()
        if actual.summaries.get(key) != value
    ]
    drift += [
        ChatDrift("chat_inboxes", key, value, actual.inboxes.get(key))
        for key, value in expected.inboxes.items()
        if actual.inboxes.get(key) != value
    ]
    drift += [
        ChatDrift("chat_inboxes", key, None, value)
        for key, value in actual.inboxes.items()
        if key not in expected.inboxes
    ]
    return drift


def fix_chat_drift(cursor: Any, drift: Sequence[ChatDrift]) -> int:
    """Write the expected values over every drifted row (and remove inbox rows that should not exist);
    returns the number of rows fixed."""
    summaries = [(*d.key, *_summary_values(d.expected)) for d in drift if d.table == "chat_conversations"]
    inboxes = [
        (*d.key, d.expected.last_read_seq, d.expected.unread_count, d.expected.last_message_at)
        for d in drift
        if d.table == "chat_inboxes" and d.expected is not None
    ]
    extra = [d.key for d in drift if d.table == "chat_inboxes" and d.expected is None]
    if summaries:
        cursor.execute(_UPSERT_SUMMARIES, _columns(summaries, 7))
    if inboxes:
        cursor.execute(_UPSERT_INBOXES, _columns(inboxes, 6))
    if extra:
        cursor.execute(_DELETE_INBOXES, _columns(extra, 3))
    return len(summaries) + len(inboxes) + len(extra)


def _summary_values(summary: Summary) -> tuple[Any, ...]:
    return (
        summary.message_count,
        summary.member_count,
        summary.last_message_at,
        summary.last_sender_id,
        summary.preview,
    )
