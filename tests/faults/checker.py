"""The verdict of a fault run, decided from the client's history and the final state of every shard.

Per write id: applied once, legitimately rejected (with a code its history allows), lost (answered 202,
found nowhere), wrongly rejected, applied although every answer refused it, or applied without ever
being sent. Then every read model is recomputed from the log, with the repair code's recomputation and
with plain SQL counts of its own, and compared with the live tables (event counts, the chat message
lists, summaries and unread counts, balances), and the ledger's invariants are checked: each currency
sums to zero, no guarded balance differs from its transfers or falls below zero.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import OperationalError, connections, transaction

from readmodels.projections import PROJECTIONS
from readmodels.projections.chat import ChatProjection
from readmodels.projections.checkpoints import current_checkpoint
from readmodels.projections.events import HOURLY_TABLE, EventCounts
from readmodels.projections.ledger import (
    PROJECTION_NAME as LEDGER_PROJECTION,
)
from readmodels.projections.ledger import (
    balance_drift,
    expected_balances,
    invariant_violations,
    projected_balances,
)
from readmodels.projector import head_position
from tests.faults.load import History, canonical

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SAMPLES = 5

#: Figures a run must end with at zero.
MUST_BE_ZERO = (
    "lost",
    "duplicated",
    "wrongly_rejected",
    "applied_and_rejected",
    "refused_then_applied",
    "applied_never_sent",
    "read_model_mismatches",
    "ledger_invariant_violations",
    "refusals_without_ids",
)

# Messages in the log against the message list and the summary's count, per conversation: an
# independent recount (plain SQL), beside the repair code's replay.
_CHAT_COUNTS = """
WITH logged AS (
    SELECT tenant_id, key AS conversation_id, count(*) AS n FROM write_log
    WHERE kind = 'message' AND position <= %(upto)s GROUP BY 1, 2
), listed AS (
    SELECT tenant_id, conversation_id, count(*) AS n, count(DISTINCT write_id) AS distinct_ids, max(seq) AS top
    FROM chat_messages GROUP BY 1, 2
)
SELECT coalesce(l.tenant_id, m.tenant_id, c.tenant_id)::text,
       coalesce(l.conversation_id, m.conversation_id, c.conversation_id),
       coalesce(l.n, 0), coalesce(m.n, 0), coalesce(m.distinct_ids, 0), coalesce(m.top, 0),
       coalesce(c.message_count, 0)
FROM logged l
FULL JOIN listed m ON m.tenant_id = l.tenant_id AND m.conversation_id = l.conversation_id
FULL JOIN chat_conversations c
    ON c.tenant_id = coalesce(l.tenant_id, m.tenant_id)
   AND c.conversation_id = coalesce(l.conversation_id, m.conversation_id)
"""


@dataclass
class Verdict:
    accepted: int = 0  # ids answered 202 (and writes published without the API)
    applied: int = 0  # of those, applied once
    legitimately_rejected: int = 0  # rejected with a code their history allows
    lost: int = 0  # answered 202, neither applied nor rejected
    duplicated: int = 0  # the three below, summed
    duplicated_in_log: int = 0
    duplicated_in_read_models: int = 0  # event counts, message lists, conversation summaries
    duplicated_in_balances: int = 0  # transfers counted twice in a projected balance
    wrongly_rejected: int = 0  # answered 202, rejected with a code not expected for it
    applied_and_rejected: int = 0  # in the log and in rejected_writes
    refused: int = 0  # ids every answer of which was a refusal (4xx/5xx)
    refused_then_applied: int = 0  # of those, applied (or recorded as rejected) after all
    indeterminate: int = 0  # no 202 and at least one request without an answer
    indeterminate_applied: int = 0  # of those, applied (allowed: the client was not told)
    applied_never_sent: int = 0  # log rows of the run's tenants with ids no request carried
    refusals_without_ids: int = 0  # 503s for client-id writes whose error body lacks those ids
    read_model_rows_checked: int = 0
    read_model_mismatches: int = 0
    ledger_invariant_violations: int = 0
    projections_caught_up: bool = True
    requests: int = 0
    retries: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    #: 5xx other than 503 with Retry-After, and 4xx other than 429 with Retry-After: "status code" → count.
    unexpected_answers: dict[str, int] = field(default_factory=dict)
    accepted_by_kind: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[Any]] = field(default_factory=dict)

    def sample(self, category: str, item: Any) -> None:
        found = self.samples.setdefault(category, [])
        if len(found) < SAMPLES:
            found.append(item)

    def problems(self) -> dict[str, Any]:
        """Every figure that should be zero and is not (and unexpected answers, a lagging projector)."""
        found: dict[str, Any] = {name: getattr(self, name) for name in MUST_BE_ZERO if getattr(self, name)}
        if self.unexpected_answers:
            found["unexpected_answers"] = self.unexpected_answers
        if not self.projections_caught_up:
            found["projections_caught_up"] = False
        return found

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _retrying(work: Any, attempts: int = 10) -> Any:
    """Run ``work``; on a connection failure (a shard just back, "too many clients") ask again."""
    for attempt in range(attempts):
        try:
            return work()
        except OperationalError:
            if attempt == attempts - 1:
                raise
            for connection in connections.all():
                connection.close()
            time.sleep(1)
    raise AssertionError("unreachable")


def _log_state(shard: str, tenant_id: str) -> tuple[Counter[str], dict[str, str]]:
    """(write id → rows in the log, write id → rejection code) of one tenant."""
    with connections[shard].cursor() as cursor:
        cursor.execute("SELECT write_id::text, count(*) FROM write_log WHERE tenant_id = %s GROUP BY 1", [tenant_id])
        logged = Counter({write_id: int(n) for write_id, n in cursor.fetchall()})
        cursor.execute("SELECT write_id::text, code FROM rejected_writes WHERE tenant_id = %s", [tenant_id])
        rejected = dict(cursor.fetchall())
    return logged, rejected


def _contents(shard: str, tenant_id: str, write_ids: list[str]) -> list[tuple[str, tuple[str, str, str]]]:
    """(write id, (kind, key, payload)) of some log rows, comparable with ``Attempt.fingerprint``."""
    with connections[shard].cursor() as cursor:
        cursor.execute(
            "SELECT write_id::text, kind, key, payload FROM write_log"
            " WHERE tenant_id = %s AND write_id = ANY(%s::uuid[])",
            [tenant_id, write_ids],
        )
        found = []
        for write_id, kind, key, payload in cursor.fetchall():
            value = json.loads(payload) if isinstance(payload, str) else payload
            found.append((write_id, (kind, key, canonical(value))))
    return found


def settled_count(tenant_shards: Mapping[str, str]) -> int:
    """Rows in the log and in rejected_writes for these tenants: progress while waiting to settle."""

    def count() -> int:
        total = 0
        for tenant_id, shard in tenant_shards.items():
            with connections[shard].cursor() as cursor:
                cursor.execute(
                    "SELECT (SELECT count(*) FROM write_log WHERE tenant_id = %s)"
                    " + (SELECT count(*) FROM rejected_writes WHERE tenant_id = %s)",
                    [tenant_id, tenant_id],
                )
                total += int(cursor.fetchone()[0])
        return total

    return int(_retrying(count))


def judge_ids(history: History, tenant_shards: Mapping[str, str], verdict: Verdict) -> None:
    """The per-id verdicts (everything but the read models)."""
    # id → [tenant, kind, accepted, refused, unanswered]
    seen: dict[str, list[Any]] = {}
    statuses: Counter[str] = Counter()
    for attempt in history.attempts:
        statuses[str(attempt.status)] += 1
        verdict.requests += 1
        verdict.retries += attempt.attempt > 1
        status = attempt.status
        if (status >= 500 and not (status == 503 and attempt.retry_after)) or (
            400 <= status < 500 and not (status == 429 and attempt.retry_after)
        ):
            verdict.unexpected_answers[f"{status} {attempt.code}"] = (
                verdict.unexpected_answers.get(f"{status} {attempt.code}", 0) + 1
            )
        if status == 503 and attempt.ids and attempt.error_ids != attempt.ids:
            verdict.refusals_without_ids += 1
            verdict.sample("refusals_without_ids", {"ids": attempt.ids[:3], "error_ids": (attempt.error_ids or [])[:3]})
        for write_id in attempt.ids:
            state = seen.get(write_id)
            if state is None:
                state = seen[write_id] = [attempt.tenant_id, attempt.kind, False, False, False]
            if status == 202:
                state[2] = True
            elif status == 0:
                state[4] = True
            else:
                state[3] = True
    # Server-id writes whose request got no answer: the client cannot know their ids, only their content.
    unanswered: dict[str, Counter[tuple[str, str, str]]] = defaultdict(Counter)
    for attempt in history.attempts:
        if attempt.status == 0 and not attempt.ids and attempt.fingerprint is not None:
            unanswered[attempt.tenant_id][attempt.fingerprint] += 1
    for tenant_id, ids in history.published_directly.items():
        for write_id in ids:
            seen[write_id] = [tenant_id, "direct", True, False, False]
    verdict.statuses = dict(sorted(statuses.items()))

    by_tenant: dict[str, list[str]] = defaultdict(list)
    for write_id, state in seen.items():
        by_tenant[state[0]].append(write_id)
    accepted_by_kind: Counter[str] = Counter()
    for tenant_id, shard in tenant_shards.items():
        logged, rejected = _retrying(lambda shard=shard, tenant_id=tenant_id: _log_state(shard, tenant_id))
        unknown = []
        for write_id, rows in logged.items():
            if rows > 1:
                verdict.duplicated_in_log += rows - 1
                verdict.sample("duplicated_in_log", write_id)
            if write_id not in seen:
                unknown.append(write_id)
        if unknown:
            expected = unanswered[tenant_id]
            contents = _retrying(
                lambda shard=shard, tenant_id=tenant_id, unknown=unknown: _contents(shard, tenant_id, unknown)
            )
            for write_id, fingerprint in contents:
                if expected[fingerprint] > 0:  # the write of a request that got no answer: allowed
                    expected[fingerprint] -= 1
                    verdict.indeterminate += 1
                    verdict.indeterminate_applied += 1
                else:
                    verdict.applied_never_sent += 1
                    verdict.sample("applied_never_sent", {"id": write_id, "content": fingerprint})
        for write_id in by_tenant.get(tenant_id, []):
            _, kind, accepted, refused, no_answer = seen[write_id]
            in_log = write_id in logged
            code = rejected.get(write_id)
            if accepted:
                verdict.accepted += 1
                accepted_by_kind[kind] += 1
                if in_log and code is not None:
                    verdict.applied_and_rejected += 1
                    verdict.sample("applied_and_rejected", write_id)
                elif in_log:
                    verdict.applied += 1
                elif code is not None and code in history.rejectable.get(write_id, ()):
                    verdict.legitimately_rejected += 1
                elif code is not None:
                    verdict.wrongly_rejected += 1
                    verdict.sample("wrongly_rejected", {"id": write_id, "kind": kind, "code": code})
                else:
                    verdict.lost += 1
                    verdict.sample("lost", {"id": write_id, "kind": kind})
            elif no_answer:
                verdict.indeterminate += 1
                verdict.indeterminate_applied += in_log
            elif refused:
                verdict.refused += 1
                if in_log or code is not None:
                    verdict.refused_then_applied += 1
                    verdict.sample("refused_then_applied", {"id": write_id, "kind": kind, "rejected_as": code})
    verdict.accepted_by_kind = dict(sorted(accepted_by_kind.items()))


def wait_for_projections(shards: Iterable[str], *, timeout: float) -> bool:
    """Wait until every projection of these shards has read its whole log; False if it did not."""
    deadline = time.monotonic() + timeout

    def behind() -> int:
        lagging = 0
        for shard in shards:
            with connections[shard].cursor() as cursor:
                head = head_position(cursor)
                lagging += sum(current_checkpoint(cursor, p.name) < head for p in PROJECTIONS)
        return lagging

    while _retrying(behind):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


READ_MODEL_FIGURES = (
    "duplicated_in_read_models",
    "duplicated_in_balances",
    "read_model_rows_checked",
    "read_model_mismatches",
    "ledger_invariant_violations",
)


def judge_read_models(shard: str, tenant_ids: set[str]) -> Verdict:
    """Recompute every read model of ``shard`` from its log (one snapshot) and compare, for these
    tenants; the findings are in the read-model figures of the verdict returned."""
    verdict = Verdict()

    def mine(tenant_id: Any) -> bool:
        return str(tenant_id) in tenant_ids

    with transaction.atomic(using=shard), connections[shard].cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        head = head_position(cursor)
        checkpoints = {p.name: current_checkpoint(cursor, p.name) for p in PROJECTIONS}
        if any(position != head for position in checkpoints.values()):
            verdict.projections_caught_up = False
            verdict.sample("projections_behind", {"shard": shard, "head": head, **checkpoints})

        events = EventCounts()
        scan = events.find_drift(cursor, upto=checkpoints[events.name], since=EPOCH)
        verdict.read_model_rows_checked += scan.rows_checked
        for drift in scan.drift:
            if mine(drift.tenant_id):
                verdict.read_model_mismatches += 1
                verdict.sample(
                    "read_model_mismatches",
                    {"table": drift.table, "name": drift.name, "bucket": drift.bucket, "log_minus_stored": drift.delta},
                )
                if drift.table == HOURLY_TABLE and drift.delta < 0:
                    verdict.duplicated_in_read_models -= drift.delta

        chat = ChatProjection()
        scan = chat.find_drift(cursor, upto=checkpoints[chat.name], since=EPOCH)
        verdict.read_model_rows_checked += scan.rows_checked
        for drift in scan.drift:
            if mine(drift.key[0]):
                verdict.read_model_mismatches += 1
                verdict.sample(
                    "read_model_mismatches",
                    {
                        "table": drift.table,
                        "key": drift.key[1:],
                        "expected": repr(drift.expected),
                        "stored": repr(drift.actual),
                    },
                )
        cursor.execute(_CHAT_COUNTS, {"upto": checkpoints[chat.name]})
        for tenant_id, conversation, logged, listed, distinct_ids, top, summarised in cursor.fetchall():
            if not mine(tenant_id):
                continue
            verdict.read_model_rows_checked += 1
            if not logged == listed == distinct_ids == top == summarised:
                verdict.read_model_mismatches += 1
                verdict.sample(
                    "read_model_mismatches",
                    {
                        "table": "chat_messages",
                        "conversation": conversation,
                        "in_log": logged,
                        "listed": listed,
                        "distinct": distinct_ids,
                        "top_seq": top,
                        "summary_count": summarised,
                    },
                )
            verdict.duplicated_in_read_models += max(0, listed - logged) + max(0, summarised - logged)

        expected = expected_balances(cursor, start=0, end=checkpoints[LEDGER_PROJECTION])
        projected = projected_balances(cursor)
        verdict.read_model_rows_checked += len(expected.keys() | projected.keys())
        for discrepancy in balance_drift(expected, projected, complete=True):
            if mine(discrepancy.tenant_id):
                verdict.read_model_mismatches += 1
                verdict.sample("read_model_mismatches", asdict(discrepancy))
        for key, (_, count) in projected.items():
            if mine(key[0]):
                verdict.duplicated_in_balances += max(0, count - expected.get(key, (0, 0))[1])
        for violation in invariant_violations(cursor):
            if mine(violation.tenant_id):
                verdict.ledger_invariant_violations += 1
                verdict.sample("ledger_invariant_violations", asdict(violation))
    return verdict


def check(
    history: History,
    tenant_shards: Mapping[str, str],
    *,
    settle_timeout: float = 180,
    projection_timeout: float = 120,
) -> Verdict:
    """Wait until the run has settled (every accepted write applied or rejected, the projector caught
    up), then judge it. ``tenant_shards``: the run's tenants (id as text) → their shard alias."""
    accepted_ids = sum(len(a.ids) for a in history.attempts if a.status == 202)
    accepted_ids += sum(len(ids) for ids in history.published_directly.values())
    deadline = time.monotonic() + settle_timeout
    while settled_count(tenant_shards) < accepted_ids and time.monotonic() < deadline:
        time.sleep(0.5)
    while True:  # a count can be reached early (e.g. by retried writes); a loss must outlast the deadline
        verdict = Verdict()
        judge_ids(history, tenant_shards, verdict)
        if not verdict.lost or time.monotonic() > deadline:
            break
        time.sleep(2)
    shards = sorted(set(tenant_shards.values()))
    wait_for_projections(shards, timeout=projection_timeout)
    for shard in shards:
        mine = {t for t, s in tenant_shards.items() if s == shard}
        found: Verdict = _retrying(lambda shard=shard, mine=mine: judge_read_models(shard, mine))
        for name in READ_MODEL_FIGURES:
            setattr(verdict, name, getattr(verdict, name) + getattr(found, name))
        verdict.projections_caught_up &= found.projections_caught_up
        for category, items in found.samples.items():
            for item in items:
                verdict.sample(category, item)
    verdict.duplicated = verdict.duplicated_in_log + verdict.duplicated_in_read_models + verdict.duplicated_in_balances
    return verdict
