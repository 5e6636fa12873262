"""Ledger reads: an account and its balance, strongly consistent for ``no_overdraft`` accounts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from django.db import connections

from readmodels.projections.ledger import PROJECTION_NAME
from readmodels.selectors.freshness import projection_freshness

# The guarded balance and the log head in one statement: the balance is exact as of that position.
_ACCOUNT = """
SELECT a.account_id, a.currency, a.no_overdraft, a.balance, a.created_at,
       b.balance, coalesce(b.transfer_count, 0),
       (SELECT coalesce(max(position), 0) FROM write_log)
FROM ledger_accounts a
LEFT JOIN ledger_balances b ON b.tenant_id = a.tenant_id AND b.account_id = a.account_id AND b.currency = a.currency
WHERE a.tenant_id = %s AND a.account_id = %s
"""


def account_balance(*, shard: str, tenant_id: uuid.UUID, account_id: str) -> dict[str, Any] | None:
    with connections[shard].cursor() as cursor:
        cursor.execute(_ACCOUNT, [tenant_id, account_id])
        found = cursor.fetchone()
    if found is None:
        return None
    account_id, currency, no_overdraft, guarded, created_at, projected, transfers, head = found
    account: dict[str, Any] = {
        "id": account_id,
        "currency": currency,
        "no_overdraft": no_overdraft,
        "created_at": created_at,
    }
    if no_overdraft:
        # Committed by the applier together with the transfers: exact as of the log's head.
        return {
            **account,
            "balance": int(guarded),
            "consistency": "strong",
            "as_of": {"position": head, "time": datetime.now(UTC)},
            "lag_seconds": 0.0,
        }
    return {
        **account,
        "balance": int(projected or 0),
        "transfer_count": transfers,
        "consistency": "eventual",
        **projection_freshness(shard, PROJECTION_NAME),
    }
