"""Rebuild: replay one projection from position 0 into shadow tables, then swap them in atomically,
while the live tables keep serving reads and the projector keeps them current until the swap.

For any projection implementing ``SupportsRebuild`` (see ``readmodels.projections.base``):

1. Take the (projection, shard) maintenance lock, so no repair runs against tables about to change.
2. Create schema ``rebuild_<name>`` holding empty copies of the projection's tables: same columns,
   defaults and identity, same constraint and index names (so later migrations still find them).
3. Replay the log slice by slice into the copies: each slice is a transaction with
   ``SET LOCAL search_path`` pointing the projection's unqualified table names at the shadow schema
   (``write_log`` still resolves to the live schema).
4. Swap, in one transaction: hold the live checkpoint row (waits for the projector's running slice,
   then the projector skips this projection), replay the last few positions, move the live tables to
   a ``retired_<name>`` schema and the copies into the live schema, set the checkpoint to the replayed
   position. Readers wait only for the instant of the renames; they never see a half-built table.
5. Drop the retired tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connections, transaction

from readmodels.projections import Projection, rebuild_support
from readmodels.projector import fold, head_position, lock_checkpoint, set_checkpoint
from readmodels.repair import maintenance_lock, retired_history

#: Called after every slice with (position replayed, head of the log).
ProgressCallback = Callable[[int, int], None]


class RebuildError(Exception):
    """The projection cannot be rebuilt now (unsupported, or another maintenance job holds it)."""


@dataclass(frozen=True, slots=True)
class RebuildResult:
    projection: str
    shard: str
    position: int
    duration_seconds: float


def _quote(cursor: Any, identifier: str) -> str:
    cursor.execute("SELECT quote_ident(%s)", [identifier])
    return str(cursor.fetchone()[0])


def _create_shadow_tables(cursor: Any, live: str, shadow: str, tables: tuple[str, ...]) -> None:
    cursor.execute(f"DROP SCHEMA IF EXISTS {shadow} CASCADE")
    cursor.execute(f"CREATE SCHEMA {shadow}")
    for table in tables:
        source = f"{live}.{_quote(cursor, table)}"
        target = f"{shadow}.{_quote(cursor, table)}"
        cursor.execute(
            f"CREATE TABLE {target} (LIKE {source} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED "
            "INCLUDING STORAGE INCLUDING COMMENTS)"
        )
        # Constraints (primary key, unique, check, exclusion) under their own names ...
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype IN ('p', 'u', 'c', 'x') ORDER BY contype, conname",
            [source],
        )
        for name, definition in cursor.fetchall():
            cursor.execute(f"ALTER TABLE {target} ADD CONSTRAINT {_quote(cursor, name)} {definition}")
        # ... then the plain indexes, recreated from their definitions on the shadow table.
        cursor.execute(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = %s::regclass "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
            [source],
        )
        for (definition,) in cursor.fetchall():
            moved = definition.replace(f" ON {source} ", f" ON {target} ", 1)
            if moved == definition:
                raise RebuildError(f"cannot copy index of {source}: unexpected definition {definition!r}")
            cursor.execute(moved)


def rebuild_projection(
    *, shard: str, projection: Projection, progress: ProgressCallback | None = None, slice_positions: int = 50_000
) -> RebuildResult:
    rebuildable = rebuild_support(projection)
    if rebuildable is None:
        raise RebuildError(f"{projection.name} does not support rebuild: it does not declare its `tables`.")
    if (retired := retired_history(projection)) is not None:
        raise RebuildError(f"{projection.name} cannot be rebuilt from the log alone: {retired}.")
    clock = time.monotonic()
    connection = connections[shard]
    with maintenance_lock(shard, projection.name) as acquired:
        if not acquired:
            raise RebuildError(f"another repair or rebuild of {projection.name} on {shard} is running; try later.")
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_schema()")
            live_name = str(cursor.fetchone()[0])
            live = _quote(cursor, live_name)
            shadow = _quote(cursor, f"rebuild_{projection.name}")
            retired = _quote(cursor, f"retired_{projection.name}")
        shadow_path = f"{shadow}, {live}"
        with transaction.atomic(using=shard), connection.cursor() as cursor:
            _create_shadow_tables(cursor, live, shadow, rebuildable.tables)

        position = 0
        while True:
            with transaction.atomic(using=shard), connection.cursor() as cursor:
                head = head_position(cursor)
                if head - position <= slice_positions:
                    break
                upto = position + slice_positions
                cursor.execute(f"SET LOCAL search_path TO {shadow_path}")
                fold(cursor, projection, position, upto)
            position = upto
            if progress:
                progress(position, head)

        with transaction.atomic(using=shard), connection.cursor() as cursor:
            lock_checkpoint(cursor, projection.name)
            head = head_position(cursor)
            cursor.execute(f"SET LOCAL search_path TO {shadow_path}")
            while position < head:
                upto = min(head, position + slice_positions)
                fold(cursor, projection, position, upto)
                position = upto
            cursor.execute(f"SET LOCAL search_path TO {live}")
            cursor.execute(f"DROP SCHEMA IF EXISTS {retired} CASCADE")
            cursor.execute(f"CREATE SCHEMA {retired}")
            for table in rebuildable.tables:
                name = _quote(cursor, table)
                cursor.execute(f"ALTER TABLE {live}.{name} SET SCHEMA {retired}")
                cursor.execute(f"ALTER TABLE {shadow}.{name} SET SCHEMA {live}")
            set_checkpoint(cursor, projection.name, position)
        if progress:
            progress(position, head)
        with transaction.atomic(using=shard), connection.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA {retired} CASCADE")
            cursor.execute(f"DROP SCHEMA {shadow} CASCADE")
    return RebuildResult(projection.name, shard, position, round(time.monotonic() - clock, 3))
