"""Server-side write ids: valid, unique UUIDv7s, one at a time or a request's worth at once."""

from __future__ import annotations

import time
import uuid

from writes.ids import uuid7, uuid7_many


def test_uuid7_many_makes_unique_version_7_ids_with_the_current_time():
    before = time.time_ns() // 1_000_000
    ids = uuid7_many(5000)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 5000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after


def test_uuid7_many_of_nothing_is_empty_and_single_ids_still_work():
    assert uuid7_many(0) == []
    assert uuid.UUID(uuid7()).version == 7
