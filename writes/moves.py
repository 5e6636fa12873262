"""Moving one logical shard to another physical shard while writes keep flowing.

Copy the logical shard's log rows (and rejected writes) in position order, catch up until the gap is
small, then fence the source (its appenders forward the logical shard's writes to a hold queue
instead of applying them), copy the last rows, switch the shard map, point the fence at the target's
queue and drain the hold queue into it. Copies go through the target's normal append path (its append
lock, ``ON CONFLICT DO NOTHING``), so rows get the target's own gap-safe positions and nothing is
applied twice. The source keeps its copy of the rows (its log is append-only); reads follow the map.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.db import connections, transaction
from kombu import Connection, Producer, Queue

from writes.apply import APPEND_LOCK_KEY, StagedRow, apply_batch, regroup
from writes.errors import WritesError
from writes.models import LOGICAL_SHARDS, MovedLogicalShard, ShardMap
from writes.queues import hold_queue, register_serializer, shard_queue
from writes.services import shard_for_logical

logger = logging.getLogger(__name__)

# Session-level advisory lock on the control database: one move of a given logical shard at a time.
MOVE_LOCK_CLASS = 0x4D4F5645  # "MOVE"

# The logical shard of a row, in SQL: the same hash as ``writes.routing.logical_shard_for``
# (byte 7 of sha256(tenant uuid) is the low byte of its first 8 bytes, i.e. that value mod 256).
_LOGICAL_SQL = "get_byte(sha256(uuid_send(tenant_id)), 7)"

_ROWS_AFTER = f"""
SELECT position, tenant_id::text, write_id::text, kind, key, payload::text, occurred_at, received_at
FROM write_log
WHERE position > %s AND {_LOGICAL_SQL} = %s
ORDER BY position
LIMIT %s
"""  # noqa: S608 (constant SQL, parameters bound)

_REJECTED = f"""
SELECT tenant_id, write_id, kind, key, payload, code, reason, rejected_at
FROM rejected_writes WHERE {_LOGICAL_SQL} = %s
"""  # noqa: S608

_INSERT_REJECTED = """
INSERT INTO rejected_writes (tenant_id, write_id, kind, key, payload, code, reason, rejected_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (tenant_id, write_id) DO NOTHING
"""

# Ledger accounts come across with a zero guarded balance: copying the log replays the tenant's transfers
# through the target's applier (and its ledger hook), which rebuilds the balance from them.
_ACCOUNTS = f"""
SELECT tenant_id, account_id, currency, no_overdraft, created_at
FROM ledger_accounts WHERE {_LOGICAL_SQL} = %s
"""  # noqa: S608

_INSERT_ACCOUNT = """
INSERT INTO ledger_accounts (tenant_id, account_id, currency, no_overdraft, balance, created_at)
VALUES (%s, %s, %s, %s, CASE WHEN %s THEN 0 END, %s)
ON CONFLICT (tenant_id, account_id) DO NOTHING
"""

_SET_FENCE = """
INSERT INTO moved_logical_shards (logical_shard, moved_to, state) VALUES (%s, %s, %s)
ON CONFLICT (logical_shard) DO UPDATE SET moved_to = EXCLUDED.moved_to, state = EXCLUDED.state, fenced_at = now()
"""


class MoveError(WritesError):
    """The move cannot start or go on; the message says why and what to do."""


@dataclass
class MoveResult:
    logical_shard: int
    source: str
    target: str
    rows_copied: int = 0
    rejected_copied: int = 0
    accounts_copied: int = 0
    held_messages: int = 0
    already_there: bool = False


def logical_shard_move(
    *,
    logical_shard: int,
    target: str,
    chunk_rows: int | None = None,
    report: Callable[[str], None] = lambda line: None,
) -> MoveResult:
    """Move ``logical_shard`` to the physical shard ``target``; safe to run again after an interruption."""
    if not 0 <= logical_shard < LOGICAL_SHARDS:
        raise MoveError(f"Logical shards are 0 to {LOGICAL_SHARDS - 1}; got {logical_shard}.")
    if target not in settings.SHARD_ALIASES:
        raise MoveError(
            f"{target} is not a configured shard ({', '.join(settings.SHARD_ALIASES)}). Register it with "
            "add_shard and add its URL to SHARD_DATABASE_URLS of every process first."
        )
    chunk = chunk_rows or settings.WRITES_MOVE_CHUNK_ROWS
    with move_lock(logical_shard):
        source = shard_for_logical(logical_shard)
        result = MoveResult(logical_shard=logical_shard, source=source, target=target)
        if source == target:
            result.already_there = True
            _finish_interrupted(result, chunk, report)
            return result
        report(f"moving logical shard {logical_shard}: {source} → {target}")
        _set_fence_on(target, logical_shard, None)  # it may have left the target before: it is coming back
        # Accounts first, so the copied transfers find them (again after the switch, for late ones).
        result.accounts_copied = _copy_accounts(source, target, logical_shard)

        # 1. Copy while writes keep landing on the source, until one pass finds less than a chunk to do
        # (or, if writes arrive faster than the copy, until the time is up: they will wait in the hold queue).
        copied_to = 0
        give_up_chasing = time.monotonic() + settings.WRITES_MOVE_MAX_CATCH_UP_SECONDS
        while True:
            copied, copied_to = _copy_rows(source, target, logical_shard, after=copied_to, chunk=chunk)
            result.rows_copied += copied
            report(f"  copied {result.rows_copied} rows (source position {copied_to})")
            if copied < chunk or time.monotonic() > give_up_chasing:
                break

        # 2. Fence: from now on the source forwards this logical shard's writes to the hold queue.
        _declare(hold_queue(logical_shard), shard_queue(target))
        _set_fence_on(source, logical_shard, (target, MovedLogicalShard.HOLDING))
        report("  source fenced; new writes wait in " + hold_queue(logical_shard).name)

        # 3. Nothing more can be appended for it on the source: copy the rest, and its rejected writes.
        result.rows_copied += _copy_all(source, target, logical_shard, after=copied_to, chunk=chunk)
        result.rejected_copied = _copy_rejected(source, target, logical_shard)

        # 4. Switch. The API reads the map on every request, so new writes go to the target's queue now.
        ShardMap.objects.update_or_create(logical_shard=logical_shard, defaults={"alias": target})
        report(f"  shard map switched: {logical_shard} → {target}")

        # 5. Accounts created on the source until the switch; then stragglers (routed before the switch) go
        # straight to the target's queue, and the held ones are released.
        result.accounts_copied += _copy_accounts(source, target, logical_shard)
        _set_fence_on(source, logical_shard, (target, MovedLogicalShard.MOVED))
        result.held_messages = _drain_hold_queue(logical_shard, target)
        report(f"  {result.held_messages} held message(s) released to {shard_queue(target).name}; done")
        logger.info(
            "moved logical shard %d from %s to %s",
            logical_shard,
            source,
            target,
            extra={"shard": target, "source": source, "rows_copied": result.rows_copied},
        )
        return result


def _finish_interrupted(result: MoveResult, chunk: int, report: Callable[[str], None]) -> None:
    """The map already points at the target: complete what an interrupted run left (fence, hold queue)."""
    for alias in settings.SHARD_ALIASES:
        if alias == result.target:
            continue
        fence = MovedLogicalShard.objects.using(alias).filter(logical_shard=result.logical_shard).first()
        if fence is not None and fence.state == MovedLogicalShard.HOLDING and fence.moved_to == result.target:
            report(f"finishing an interrupted move from {alias}")
            result.source = alias
            result.rows_copied += _copy_all(alias, result.target, result.logical_shard, after=0, chunk=chunk)
            result.rejected_copied += _copy_rejected(alias, result.target, result.logical_shard)
            _set_fence_on(alias, result.logical_shard, (result.target, MovedLogicalShard.MOVED))
    result.held_messages = _drain_hold_queue(result.logical_shard, result.target)
    report(f"logical shard {result.logical_shard} is on {result.target}")


@contextmanager
def move_lock(logical_shard: int) -> Iterator[None]:
    """Hold the logical shard for the block: no move of it (nor an erasure touching it) runs meanwhile."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [MOVE_LOCK_CLASS, logical_shard])
        (locked,) = cursor.fetchone()
    if not locked:
        raise MoveError(f"Logical shard {logical_shard} is being moved by another process.")
    try:
        yield
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [MOVE_LOCK_CLASS, logical_shard])


def _copy_rows(source: str, target: str, logical_shard: int, *, after: int, chunk: int) -> tuple[int, int]:
    """Copy up to ``chunk`` rows above position ``after``; returns (rows read, last position read)."""
    with connections[source].cursor() as cursor:
        cursor.execute(_ROWS_AFTER, [after, logical_shard, chunk])
        found = cursor.fetchall()
    if not found:
        return 0, after
    # Every transfer read here was applied on the source, so its accounts existed there when these rows
    # were read: copied now, the target's hook finds them (an account created during the catch-up,
    # with a transfer using it, would otherwise reach the target after the transfer).
    _copy_accounts(source, target, logical_shard)
    rows: list[StagedRow] = [
        (seq, tenant, write_id, kind, key, payload, occurred.isoformat(), received.isoformat())
        for seq, (_, tenant, write_id, kind, key, payload, occurred, received) in enumerate(found)
    ]
    # The target's own append path: its append lock (gap-safe positions there) and ON CONFLICT DO NOTHING.
    apply_batch(shard=target, groups=regroup(rows), divert=False)
    return len(found), int(found[-1][0])


def _copy_all(source: str, target: str, logical_shard: int, *, after: int, chunk: int) -> int:
    total = 0
    while True:
        copied, after = _copy_rows(source, target, logical_shard, after=after, chunk=chunk)
        total += copied
        if copied == 0:
            return total


def _copy_rejected(source: str, target: str, logical_shard: int) -> int:
    with connections[source].cursor() as cursor:
        cursor.execute(_REJECTED, [logical_shard])
        found = cursor.fetchall()
    if found:
        with transaction.atomic(using=target), connections[target].cursor() as cursor:
            cursor.executemany(_INSERT_REJECTED, found)
    return len(found)


def _copy_accounts(source: str, target: str, logical_shard: int) -> int:
    """Copy the logical shard's ledger accounts that the target does not have yet; returns how many."""
    with connections[source].cursor() as cursor:
        cursor.execute(_ACCOUNTS, [logical_shard])
        found = cursor.fetchall()
    copied = 0
    with transaction.atomic(using=target), connections[target].cursor() as cursor:
        for tenant_id, account_id, currency, no_overdraft, created_at in found:
            cursor.execute(_INSERT_ACCOUNT, [tenant_id, account_id, currency, no_overdraft, no_overdraft, created_at])
            copied += cursor.rowcount
    return copied


def _set_fence_on(alias: str, logical_shard: int, fence: tuple[str, str] | None) -> None:
    """Set (or with ``None`` remove) a shard's fence, under its append lock: no append straddles it."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK_KEY])
        if fence is None:
            cursor.execute("DELETE FROM moved_logical_shards WHERE logical_shard = %s", [logical_shard])
        else:
            cursor.execute(_SET_FENCE, [logical_shard, *fence])


def _declare(*queues: Queue) -> None:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=5) as connection:
        channel = connection.channel()
        for queue in queues:
            queue.bind(channel).declare()


def _drain_hold_queue(logical_shard: int, target: str) -> int:
    """Republish every held message to the target's queue (confirmed), then delete the hold queue.

    Each message is acked only after its copy is confirmed: a crash here repeats a message, never
    drops one, and the target ignores repeated ids.
    """
    register_serializer()
    moved = 0
    with Connection(
        settings.CELERY_BROKER_URL, connect_timeout=5, transport_options={"confirm_publish": True}
    ) as connection:
        held = hold_queue(logical_shard).bind(connection.channel())
        held.declare()
        destination = shard_queue(target)
        producer = Producer(connection.channel())
        while (message := held.get(no_ack=False)) is not None:
            producer.publish(
                message.body,
                exchange=destination.exchange,
                routing_key=destination.routing_key,
                headers=message.headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                delivery_mode=2,
                declare=[destination],
                retry=False,
            )
            message.ack()
            moved += 1
        held.delete()
    return moved
