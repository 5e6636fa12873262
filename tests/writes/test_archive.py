"""Archives of the log on real PostgreSQL: a day's kinds written as Parquet files equal the log, the
manifest catches damage, a replay into an empty shard gives the same rows and the same read models, a
second replay applies nothing, and erasing a tenant from the archives leaves the others' rows."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from readmodels.projector import project_shard
from tests.conftest import ALL_DATABASES
from writes.apply import apply_batch
from writes.archive import COLUMNS, SCHEMA, archive_day, erase_tenant_from_archives, verify_archive
from writes.errors import ArchiveError
from writes.ledger import account_create
from writes.partitions import partition_name, today
from writes.routing import TenantContext

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

LIVE, FRESH = "shard_0", "shard_1"
DAY = today() - timedelta(days=3)
NEXT_DAY = DAY + timedelta(days=1)
KINDS = ["event", "member", "message", "read", "transfer"]
ACCOUNTS = [("equity", False), ("wallet", True), ("shop", False)]


def uuid7_at(moment: datetime) -> str:
    """A UUIDv7 whose time is ``moment``: the day the log files its write under."""
    millis = int(moment.timestamp() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = millis << 80 | 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def at(day: date, seconds: float) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC) + timedelta(seconds=seconds)


class History:
    """Writes of two tenants, applied to the live shard: A writes every kind (and is the only one with
    reads and transfers), B events and messages. Ids are UUIDv7 of their receipt, except transfers'
    (UUIDv4, filed under the day of their receipt)."""

    def __init__(self) -> None:
        self.a, self.b = str(uuid.uuid4()), str(uuid.uuid4())
        self.accounts_on(LIVE)
        self.clock = 12 * 3600.0

    def send(self, tenant: str, kind: str, items: list[tuple[str, dict[str, Any]]], *, day: date = DAY) -> None:
        """One request: its writes share a receipt time (``day``, advancing) and get ids of that time."""
        self.clock += 7.5
        received = at(day, self.clock)
        rows = [
            [
                str(uuid.uuid4()) if kind == "transfer" else uuid7_at(received),
                key,
                json.dumps(payload),
                (received - timedelta(seconds=30 * n)).isoformat(),
            ]
            for n, (key, payload) in enumerate(items)
        ]
        result = apply_batch(shard=LIVE, groups=[[tenant, kind, received.isoformat(), rows]])
        assert result.applied == len(rows), result

    def load(self) -> None:
        for tenant, names in [(self.a, ["signup", "page_view", "buy"]), (self.b, ["signup", "login"])]:
            for batch in range(3):
                self.send(tenant, "event", [(names[n % len(names)], {"n": n, "batch": batch}) for n in range(12)])
        self.send(self.a, "member", [("room-a", {"user_ids": ["ann", "bob"]})])
        bodies = ["Hi all", "tab\there", "new\nline", "back\\slash", "ünïcødé ✓", '"quoted"']
        for n, body in enumerate(bodies):
            self.send(self.a, "message", [("room-a", {"sender_id": ["ann", "bob", "cy"][n % 3], "body": body})])
        self.send(self.b, "message", [("room-b", {"sender_id": "zed", "body": f"b{n}"}) for n in range(4)])
        self.send(self.a, "read", [("room-a", {"user_id": "bob", "up_to": 3})])
        transfers = [("equity", "wallet", 90), ("wallet", "shop", 25), ("shop", "equity", 5), ("wallet", "shop", 60)]
        for debit, credit, amount in transfers:
            payload = {"debit_account": debit, "credit_account": credit, "amount": amount, "currency": "EUR"}
            self.send(self.a, "transfer", [(str(uuid.uuid4()), payload)])
        # The next day's writes: not part of DAY's archive.
        self.send(self.a, "event", [("signup", {"n": 99})], day=NEXT_DAY)

    def accounts_on(self, shard: str) -> None:
        for account_id, guarded in ACCOUNTS:
            tenant = TenantContext(uuid.UUID(self.a), shard)
            account_create(tenant=tenant, account_id=account_id, currency="EUR", no_overdraft=guarded)


@pytest.fixture
def archive_dir(settings: Any, tmp_path: Path) -> Path:
    settings.WRITES_ARCHIVE_DIR = tmp_path / "archive"
    return Path(settings.WRITES_ARCHIVE_DIR)


@pytest.fixture
def history() -> History:
    history = History()
    history.load()
    return history


_LOG_COLUMNS = (
    "position, tenant_id::text, write_id::text, kind, key, payload::text, occurred_at, received_at, applied_at, id_day"
)


def log_rows(shard: str, *, kind: str | None = None, day: date | None = None, tenant: str | None = None) -> list[Any]:
    with connections[shard].cursor() as cursor:
        cursor.execute(
            f"SELECT {_LOG_COLUMNS} FROM write_log WHERE (%s::text IS NULL OR kind = %s) "
            "AND (%s::date IS NULL OR id_day = %s) AND (%s::uuid IS NULL OR tenant_id = %s::uuid) ORDER BY position",
            [kind, kind, day, day, tenant, tenant],
        )
        return [tuple(row) for row in cursor.fetchall()]


def without_positions(rows: list[Any]) -> list[Any]:
    """What a replay keeps: everything but the position and the time of applying."""
    return [row[1:8] + row[9:] for row in rows]


def file_rows(path: Path) -> list[Any]:
    table = pq.read_table(path)
    return [tuple(record[name] for name, _, _ in COLUMNS) for record in table.to_pylist()]


def manifest_of(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / "manifest.json").read_text()))


def replay(*args: str) -> str:
    out = io.StringIO()
    call_command("replay_archive", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


# --- archiving ----------------------------------------------------------------------------------


def test_archive_day_files_equal_the_log(archive_dir, history):
    archived = archive_day(shard=LIVE, day=DAY, kinds=KINDS, row_group_rows=10)

    directory = archive_dir / LIVE / DAY.isoformat()
    assert archived.directory == directory
    assert {p.name for p in directory.iterdir()} == {".lock", "manifest.json", *(f"{k}.parquet" for k in KINDS)}
    manifest = manifest_of(directory)
    assert (manifest["shard"], manifest["day"], manifest["format_version"]) == (LIVE, DAY.isoformat(), 1)
    assert [c["name"] for c in manifest["columns"]] == [name for name, _, _ in COLUMNS]
    entries = {entry["kind"]: entry for entry in manifest["files"]}
    assert sorted(entries) == KINDS
    for kind in KINDS:
        expected = log_rows(LIVE, kind=kind, day=DAY)
        path = directory / f"{kind}.parquet"
        assert file_rows(path) == expected, kind
        entry = entries[kind]
        assert entry["rows"] == archived.rows[kind] == len(expected)
        assert (entry["min_position"], entry["max_position"]) == (expected[0][0], expected[-1][0])
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["bytes"] == path.stat().st_size
        parquet = pq.ParquetFile(path)
        assert parquet.schema_arrow.equals(SCHEMA)
        assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
        assert parquet.metadata.num_row_groups == -(-len(expected) // 10)  # streamed 10 rows at a time
    assert archived.max_position == max(row[0] for row in log_rows(LIVE, day=DAY))
    assert verify_archive(archive_dir) == []


def test_archive_day_merges_kinds_into_the_manifest_and_replaces_a_kind_archived_again(archive_dir, history):
    first = archive_day(shard=LIVE, day=DAY, kinds=["event"])
    archive_day(shard=LIVE, day=DAY, kinds=["message", "member"])
    directory = first.directory
    event_entry = next(e for e in manifest_of(directory)["files"] if e["kind"] == "event")
    assert [e["kind"] for e in manifest_of(directory)["files"]] == ["event", "member", "message"]

    again = archive_day(shard=LIVE, day=DAY, kinds=["event", "nothing_here"])
    files = manifest_of(directory)["files"]
    assert [e["kind"] for e in files] == ["event", "member", "message"]  # no file for a kind without rows
    assert again.rows == {"event": event_entry["rows"], "nothing_here": 0}
    replaced = next(e for e in files if e["kind"] == "event")
    assert {k: v for k, v in replaced.items() if k != "written_at"} == {
        k: v for k, v in event_entry.items() if k != "written_at"
    }
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]

    # Retention took the rows out of the log, then the archive ran again: the file stays as it was.
    with connections[LIVE].cursor() as cursor:
        cursor.execute(f"TRUNCATE {partition_name(DAY)}")
    assert archive_day(shard=LIVE, day=DAY, kinds=["event"]).rows == {"event": 0}
    assert verify_archive(directory) == []
    assert next(e for e in manifest_of(directory)["files"] if e["kind"] == "event")["rows"] == event_entry["rows"]


def test_archive_day_refuses_a_day_without_a_partition_and_a_kind_that_is_no_file_name(archive_dir, history):
    with pytest.raises(ArchiveError, match="no partition"):
        archive_day(shard=LIVE, day=date(2001, 1, 1), kinds=["event"])
    with pytest.raises(ArchiveError, match="kind"):
        archive_day(shard=LIVE, day=DAY, kinds=["../event"])


def test_verify_archive_finds_a_flipped_byte_and_a_missing_file(archive_dir, history):
    archived = archive_day(shard=LIVE, day=DAY, kinds=KINDS)
    assert verify_archive(archived.directory) == []

    events = archived.directory / "event.parquet"
    data = bytearray(events.read_bytes())
    data[len(data) // 2] ^= 0x01
    events.write_bytes(bytes(data))
    problems = verify_archive(archive_dir)
    assert len(problems) == 1
    assert "event.parquet: checksum mismatch" in problems[0]

    (archived.directory / "message.parquet").unlink()
    problems = verify_archive(archive_dir / LIVE)
    assert len(problems) == 2
    assert any("message.parquet: missing" in p for p in problems)

    with pytest.raises(CommandError, match="damaged; nothing was replayed"):
        replay(str(archived.directory), "--shard", FRESH)
    assert log_rows(FRESH) == []


# --- replaying ----------------------------------------------------------------------------------


def test_replay_into_an_empty_shard_gives_the_same_rows_and_a_second_replay_applies_nothing(archive_dir, history):
    archive_day(shard=LIVE, day=DAY, kinds=KINDS)
    archive_day(shard=LIVE, day=NEXT_DAY, kinds=["event"])
    history.accounts_on(FRESH)
    expected = without_positions(log_rows(LIVE))

    first = replay(str(archive_dir / LIVE), "--shard", FRESH)

    assert without_positions(log_rows(FRESH)) == expected  # same rows, same id_day, in the same order
    total = len(expected)
    assert f"{total} row(s) read, {total} applied, 0 duplicate(s)" in first
    assert f"{LIVE}/{DAY.isoformat()}: event " in first
    assert f"{LIVE}/{NEXT_DAY.isoformat()}: event 1" in first

    second = replay(str(archive_dir), "--shard", FRESH)
    assert f"{total} row(s) read, 0 applied, {total} duplicate(s)" in second
    assert without_positions(log_rows(FRESH)) == expected

    # Without --shard, into the shard the manifests name: the live one, which has every row already.
    assert f"{LIVE} → {LIVE}: 2 day(s), {total} row(s) read, 0 applied" in replay(str(archive_dir))
    assert without_positions(log_rows(LIVE)) == expected


def test_replay_keeps_position_order_across_days_whose_positions_interleave(archive_dir, settings):
    tenant = str(uuid.uuid4())

    def write(write_id: str, received: datetime, body: str) -> None:
        row = [write_id, "room", json.dumps({"sender_id": "ann", "body": body}), received.isoformat()]
        apply_batch(shard=LIVE, groups=[[tenant, "message", received.isoformat(), [row]]])

    write(uuid7_at(at(DAY, 100)), at(DAY, 100), "first")
    write(uuid7_at(at(NEXT_DAY, 10)), at(NEXT_DAY, 10), "second")
    # An id made a second before midnight, received after it: filed under DAY, after NEXT_DAY's first write.
    write(uuid7_at(at(DAY, 86_399)), at(NEXT_DAY, 20), "third")
    write(uuid7_at(at(NEXT_DAY, 30)), at(NEXT_DAY, 30), "fourth")
    assert [row[9] for row in log_rows(LIVE)] == [DAY, NEXT_DAY, DAY, NEXT_DAY]
    for day in (DAY, NEXT_DAY):
        archive_day(shard=LIVE, day=day, kinds=["message"])

    replay(str(archive_dir / LIVE), "--shard", FRESH, "--rebuild-read-models")

    assert without_positions(log_rows(FRESH)) == without_positions(log_rows(LIVE))
    with connections[FRESH].cursor() as cursor:
        cursor.execute("SELECT seq, body FROM chat_messages ORDER BY seq")
        assert cursor.fetchall() == [(1, "first"), (2, "second"), (3, "third"), (4, "fourth")]


def _read_models(shard: str, tenant: str) -> dict[str, list[Any]]:
    tables = {
        "event_counts_hourly": "name, bucket, count",
        "event_counts_daily": "name, bucket, count",
        "chat_messages": "conversation_id, seq, write_id, sender_id, body, sent_at",
        "chat_conversations": "conversation_id, message_count, member_count, last_message_at, last_sender_id, preview",
        "chat_inboxes": "conversation_id, user_id, last_read_seq, unread_count, last_message_at",
        "ledger_balances": "account_id, currency, balance, transfer_count",
        "ledger_accounts": "account_id, currency, no_overdraft, balance",
    }
    found = {}
    with connections[shard].cursor() as cursor:
        for table, columns in tables.items():
            cursor.execute(f"SELECT {columns} FROM {table} WHERE tenant_id = %s ORDER BY {columns}", [tenant])
            found[table] = cursor.fetchall()
    return found


def test_an_archive_replayed_into_a_fresh_database_gives_the_live_read_models(archive_dir, history):
    project_shard(LIVE)
    live = _read_models(LIVE, history.a)
    assert all(live.values()), {table: len(rows) for table, rows in live.items()}
    archive_day(shard=LIVE, day=DAY, kinds=KINDS)
    archive_day(shard=LIVE, day=NEXT_DAY, kinds=KINDS)
    history.accounts_on(FRESH)

    out = replay(str(archive_dir), "--shard", FRESH, "--tenant", history.a, "--rebuild-read-models")

    assert f"{FRESH}: read models caught up" in out
    assert _read_models(FRESH, history.a) == live
    assert log_rows(FRESH, tenant=history.b) == []


def test_replay_refuses_what_the_target_would_reject_and_applies_nothing(archive_dir, history, settings):
    archive_day(shard=LIVE, day=DAY, kinds=KINDS)
    with pytest.raises(CommandError, match=r"lacks ledger accounts .*/wallet \(EUR, missing\)"):
        replay(str(archive_dir), "--shard", FRESH)
    history.accounts_on(FRESH)
    settings.WRITES_RETENTION_DAYS = {"event": 1}
    with pytest.raises(CommandError, match="event writes are kept 1 days"):
        replay(str(archive_dir), "--shard", FRESH)
    assert log_rows(FRESH) == []
    settings.WRITES_RETENTION_DAYS = {}
    with connections[FRESH].cursor() as cursor:
        cursor.execute(
            "INSERT INTO log_partitions (day, state, retired_kinds) VALUES (%s, 'attached', '{read}') "
            "ON CONFLICT (day) DO UPDATE SET retired_kinds = excluded.retired_kinds",
            [DAY],
        )
    with pytest.raises(CommandError, match="has retired read writes"):
        replay(str(archive_dir), "--shard", FRESH)
    with pytest.raises(CommandError, match="no such directory"):
        replay(str(archive_dir / "nowhere"), "--shard", FRESH)
    (archive_dir / "empty").mkdir()
    with pytest.raises(CommandError, match=r"no manifest\.json"):
        replay(str(archive_dir / "empty"), "--shard", FRESH)
    assert log_rows(FRESH) == []


# --- erasure ------------------------------------------------------------------------------------


def test_erase_tenant_from_archives_leaves_the_other_tenants_rows(archive_dir, history):
    archive_day(shard=LIVE, day=DAY, kinds=KINDS)
    archive_day(shard=LIVE, day=NEXT_DAY, kinds=["event"])
    directory = archive_dir / LIVE / DAY.isoformat()
    before = {kind: file_rows(directory / f"{kind}.parquet") for kind in KINDS}
    a_rows = sum(1 for rows in before.values() for row in rows if row[1] == history.a) + 1  # + NEXT_DAY's event

    counts = erase_tenant_from_archives(history.a)

    # event and message hold both tenants' rows (rewritten); member, read and transfer only A's (removed);
    # NEXT_DAY's event file only A's (removed).
    assert counts == {"archive_rows": a_rows, "archive_files": 6}
    assert sorted(p.name for p in directory.glob("*.parquet")) == ["event.parquet", "message.parquet"]
    assert not list((archive_dir / LIVE / NEXT_DAY.isoformat()).glob("*.parquet"))
    for kind in ("event", "message"):
        assert file_rows(directory / f"{kind}.parquet") == [row for row in before[kind] if row[1] != history.a]
    entries = {entry["kind"]: entry for entry in manifest_of(directory)["files"]}
    assert sorted(entries) == ["event", "message"]
    assert entries["event"]["rows"] == len([row for row in before["event"] if row[1] == history.b])
    assert verify_archive(archive_dir) == []
    assert erase_tenant_from_archives(history.a) == {"archive_rows": 0, "archive_files": 0}

    # What is left replays as before: B's rows only.
    replay(str(archive_dir), "--shard", FRESH)
    assert without_positions(log_rows(FRESH)) == without_positions(log_rows(LIVE, tenant=history.b))
