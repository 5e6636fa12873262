"""Ledger balances from ``transfer`` writes, the ledger's invariant checks, and their repair.

A balance is credits minus debits in minor units; the projection aggregates a slice to one delta per
account and applies it with one upsert. ``no_overdraft`` accounts also carry the applier's strongly
consistent balance (``ledger_accounts.balance``), which the checks compare with the log as well.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from readmodels.projections.base import DriftScan, LogRow
from readmodels.projections.checkpoints import current_checkpoint, first_position_since, payload_of

logger = logging.getLogger(__name__)

TRANSFER_KIND = "transfer"
PROJECTION_NAME = "ledger_balances"

BalanceKey = tuple[str, str, str]  # (tenant_id, account_id, currency)

_UPSERT_DELTAS = """
INSERT INTO ledger_balances (tenant_id, account_id, currency, balance, transfer_count)
SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::numeric[], %s::bigint[])
ON CONFLICT (tenant_id, account_id, currency) DO UPDATE SET
    balance = ledger_balances.balance + excluded.balance,
    transfer_count = ledger_balances.transfer_count + excluded.transfer_count
"""

_SET_BALANCES = """
INSERT INTO ledger_balances (tenant_id, account_id, currency, balance, transfer_count)
SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::numeric[], %s::bigint[])
ON CONFLICT (tenant_id, account_id, currency) DO UPDATE SET
    balance = excluded.balance, transfer_count = excluded.transfer_count
"""


class LedgerProjection:
    name = PROJECTION_NAME
    kinds = frozenset({TRANSFER_KIND})
    # Only the projected balances: the guarded ones (ledger_accounts.balance) are the applier's.
    tables = ("ledger_balances",)

    def find_drift(self, cursor: Any, *, upto: int, since: datetime) -> DriftScan:
        """Projected balances of the accounts a transfer since ``since`` touched, against the log up to
        ``upto``; plus the invariants that need a person rather than a fix (per-currency sums,
        guarded balances), which repair reports as drift it could not fix."""
        start = first_position_since(cursor, since, upto=upto) - 1
        expected = expected_balances(cursor, start=start, end=upto)
        drift = balance_drift(expected, projected_balances(cursor), complete=start == 0)
        return DriftScan(rows_checked=len(expected), drift=drift + invariant_violations(cursor))

    def fix_drift(self, cursor: Any, drift: Sequence[Any]) -> int:
        # Set to the log's value as of the checkpoint held now, not the scan's older snapshot.
        keys = {(d.tenant_id, d.account_id, d.currency) for d in drift if d.check == "projected_balance"}
        if not keys:
            return 0
        end = current_checkpoint(cursor, self.name)
        expected = expected_balances(cursor, start=0, end=end)
        actual = projected_balances(cursor)
        fresh = balance_drift(
            {k: expected.get(k, (0, 0)) for k in keys}, {k: actual.get(k, (0, 0)) for k in keys}, complete=False
        )
        return fix_balance_drift(cursor, fresh, expected)

    def apply(self, cursor: Any, rows: Sequence[LogRow]) -> None:
        deltas: dict[BalanceKey, list[int]] = defaultdict(lambda: [0, 0])
        for row in rows:
            payload = payload_of(row)
            tenant_id, amount, currency = str(row.tenant_id), int(payload["amount"]), str(payload["currency"])
            debit = deltas[(tenant_id, str(payload["debit_account"]), currency)]
            debit[0] -= amount
            debit[1] += 1
            credit = deltas[(tenant_id, str(payload["credit_account"]), currency)]
            credit[0] += amount
            credit[1] += 1
        if deltas:
            cursor.execute(_UPSERT_DELTAS, _balance_columns({k: (v[0], v[1]) for k, v in deltas.items()}))


def _balance_columns(values: dict[BalanceKey, tuple[int, int]]) -> list[list[Any]]:
    ordered = sorted(values.items())
    return [
        [k[0] for k, _ in ordered],
        [k[1] for k, _ in ordered],
        [k[2] for k, _ in ordered],
        [v[0] for _, v in ordered],
        [v[1] for _, v in ordered],
    ]


# --- Invariants and repair ----------------------------------------------------------------

# Both sides of every transfer up to a position, as signed amounts per account.

_EXPECTED_TOUCHED = """
WITH touched AS (
    SELECT DISTINCT tenant_id, payload->>'debit_account' AS account_id FROM write_log
    WHERE kind = 'transfer' AND position > %(start)s AND position <= %(end)s
    UNION
    SELECT DISTINCT tenant_id, payload->>'credit_account' FROM write_log
    WHERE kind = 'transfer' AND position > %(start)s AND position <= %(end)s
), sides AS (
SELECT tenant_id, payload->>'debit_account' AS account_id, payload->>'currency' AS currency,
       -(payload->>'amount')::numeric AS amount
FROM write_log WHERE kind = 'transfer' AND position <= %(end)s
UNION ALL
SELECT tenant_id, payload->>'credit_account', payload->>'currency', (payload->>'amount')::numeric
FROM write_log WHERE kind = 'transfer' AND position <= %(end)s
)
SELECT s.tenant_id::text, s.account_id, s.currency, sum(s.amount), count(*)
FROM sides s JOIN touched t ON s.tenant_id = t.tenant_id AND s.account_id = t.account_id
GROUP BY 1, 2, 3
"""

_PROJECTED = """
SELECT tenant_id::text, account_id, currency, balance, transfer_count FROM ledger_balances
"""

_CURRENCY_SUMS = """
SELECT tenant_id::text, currency, sum(balance) FROM ledger_balances GROUP BY 1, 2 HAVING sum(balance) <> 0
"""

# One statement, so the guarded balances and the log are read in one snapshot (the applier commits
# both together).
_GUARDED = """
WITH sides AS (
    SELECT tenant_id, payload->>'debit_account' AS account_id, -(payload->>'amount')::numeric AS amount
    FROM write_log WHERE kind = 'transfer'
    UNION ALL
    SELECT tenant_id, payload->>'credit_account', (payload->>'amount')::numeric
    FROM write_log WHERE kind = 'transfer'
), totals AS (SELECT tenant_id, account_id, sum(amount) AS total FROM sides GROUP BY 1, 2)
SELECT a.tenant_id::text, a.account_id, a.currency, coalesce(t.total, 0), a.balance
FROM ledger_accounts a LEFT JOIN totals t ON t.tenant_id = a.tenant_id AND t.account_id = a.account_id
WHERE a.no_overdraft AND (a.balance IS DISTINCT FROM coalesce(t.total, 0) OR a.balance < 0)
"""


@dataclass(frozen=True, slots=True)
class LedgerDiscrepancy:
    """One broken invariant. ``check`` is ``currency_sum`` (a tenant's balances in a currency do not
    sum to zero), ``projected_balance`` (a projected balance is not the sum of its transfers) or
    ``guarded_balance`` (a ``no_overdraft`` balance is not the sum of its transfers, or is negative)."""

    check: str
    tenant_id: str
    currency: str
    account_id: str | None
    expected: int
    actual: int


def expected_balances(cursor: Any, *, start: int, end: int) -> dict[BalanceKey, tuple[int, int]]:
    """(balance, transfer count) the log gives, up to ``end``, for every account a transfer in
    ``(start, end]`` touched. With ``start=0`` that is every account."""
    cursor.execute(_EXPECTED_TOUCHED, {"start": start, "end": end})
    return {(t, a, c): (int(total), int(count)) for t, a, c, total, count in cursor.fetchall()}


def projected_balances(cursor: Any) -> dict[BalanceKey, tuple[int, int]]:
    cursor.execute(_PROJECTED)
    return {(t, a, c): (int(balance), int(count)) for t, a, c, balance, count in cursor.fetchall()}


def balance_drift(
    expected: dict[BalanceKey, tuple[int, int]], actual: dict[BalanceKey, tuple[int, int]], *, complete: bool
) -> list[LedgerDiscrepancy]:
    """Projected balances that differ from the log's. ``complete``: ``expected`` covers every account,
    so a projected balance it does not list is drift too."""
    drift = [
        LedgerDiscrepancy("projected_balance", key[0], key[2], key[1], value[0], actual.get(key, (0, 0))[0])
        for key, value in expected.items()
        if actual.get(key, (0, 0)) != value
    ]
    if complete:
        drift += [
            LedgerDiscrepancy("projected_balance", key[0], key[2], key[1], 0, value[0])
            for key, value in actual.items()
            if key not in expected and value != (0, 0)
        ]
    return drift


def invariant_violations(cursor: Any) -> list[LedgerDiscrepancy]:
    """Per-currency sums that are not zero, and guarded balances that are not the sum of their
    transfers (or are negative)."""
    cursor.execute(_CURRENCY_SUMS)
    found = [LedgerDiscrepancy("currency_sum", t, c, None, 0, int(total)) for t, c, total in cursor.fetchall()]
    cursor.execute(_GUARDED)
    found += [
        LedgerDiscrepancy("guarded_balance", t, c, a, int(total), int(balance if balance is not None else 0))
        for t, a, c, total, balance in cursor.fetchall()
    ]
    return found


def ledger_discrepancies(cursor: Any, *, end: int) -> list[LedgerDiscrepancy]:
    """Every broken ledger invariant on this shard: per-currency sums, projected balances against the
    log up to ``end`` (the projection's checkpoint), and guarded balances against the whole log."""
    projected = balance_drift(expected_balances(cursor, start=0, end=end), projected_balances(cursor), complete=True)
    return projected + invariant_violations(cursor)


def fix_balance_drift(
    cursor: Any, drift: Sequence[LedgerDiscrepancy], expected: dict[BalanceKey, tuple[int, int]]
) -> int:
    """Set every drifted projected balance to the log's value; returns how many were fixed. Guarded
    balances are not touched: they are the applier's record, and a difference there needs a person."""
    keys = {(d.tenant_id, d.account_id, d.currency) for d in drift if d.check == "projected_balance" and d.account_id}
    fixes = {key: expected.get(key, (0, 0)) for key in keys}
    if fixes:
        cursor.execute(_SET_BALANCES, _balance_columns(fixes))
    return len(fixes)
