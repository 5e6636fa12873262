"""Who decides a published message's fate: the worker that applies it, or the API that gave up on it.

The API answers 202 only once the broker confirmed. When the confirm comes too late, the API has
already answered 503 and the message must never take effect. Both sides therefore race for one row in
``publish_fates`` (keyed by the message's task id): the applier claims its messages inside the batch
transaction and applies only those it won; the API, on a late confirm, inserts "abandoned" and answers
503 only if it won, 202 if the applier had already committed. A unique key makes the race exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

APPLIED = "applied"
ABANDONED = "abandoned"

# Claimed rows are kept for this long (a message is redelivered well within it), then pruned.
KEEP_DAYS = 7

_CLAIM = """
INSERT INTO publish_fates (message_id, fate)
SELECT unnest(%s::uuid[]), 'applied'
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id::text
"""

#: The API's side, run on the message's shard: one row back means "abandoned by us", none "applied".
ABANDON_SQL = """
INSERT INTO publish_fates (message_id, fate) VALUES (%s::uuid, 'abandoned')
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id
"""

PRUNE_SQL = "DELETE FROM publish_fates WHERE decided_at < now() - make_interval(days => %s)"


def claim_messages(cursor: Any, message_ids: Iterable[str]) -> set[str]:
    """Inside the apply transaction: the ids among ``message_ids`` this transaction may apply.

    A message is left out when the API abandoned it (answered 503) or when an earlier transaction
    already applied it (a redelivery: its rows are in the log already).
    """
    wanted = list(dict.fromkeys(message_ids))
    if not wanted:
        return set()
    cursor.execute(_CLAIM, [wanted])
    return {row[0] for row in cursor.fetchall()}
