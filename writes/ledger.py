"""The ledger's write side: accounts (created synchronously) and the applier's transfer hook.

The hook runs inside a batch's transaction: it locks the batch's ``no_overdraft`` accounts once, in
sorted order, applies the batch's transfers in order, rejects those that would overdraw, and commits
the new balances together with the log rows.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec
from django.db import DatabaseError, IntegrityError, transaction

from writes.apply import EXISTS_WITH_DIFFERENT_FIELDS, Rejection, StagedRow, conflict_reason
from writes.errors import AccountConflict
from writes.ids import canonical_uuid
from writes.models import LedgerAccount
from writes.routing import TenantContext

logger = logging.getLogger(__name__)

TRANSFER_KIND = "transfer"


@dataclass(frozen=True, slots=True)
class AccountCreated:
    account: LedgerAccount
    created: bool


def account_create(*, tenant: TenantContext, account_id: str, currency: str, no_overdraft: bool) -> AccountCreated:
    """Create an account on the tenant's shard. The same id with the same attributes is a no-op (the
    existing account is returned); with other attributes it raises ``AccountConflict``."""
    attributes = {"currency": currency, "no_overdraft": no_overdraft}
    try:
        with transaction.atomic(using=tenant.shard):
            account = LedgerAccount.objects.using(tenant.shard).create(
                tenant_id=tenant.tenant_id,
                account_id=account_id,
                balance=0 if no_overdraft else None,
                **attributes,
            )
        account.refresh_from_db(fields=["created_at"])
        return AccountCreated(account, created=True)
    except IntegrityError:
        existing = LedgerAccount.objects.using(tenant.shard).get(tenant_id=tenant.tenant_id, account_id=account_id)
    if (existing.currency, existing.no_overdraft) != (currency, no_overdraft):
        raise AccountConflict(
            f"Account {account_id!r} exists as {existing.currency}"
            f"{', no_overdraft' if existing.no_overdraft else ''}; accounts cannot be changed."
        )
    return AccountCreated(existing, created=False)


def accounts_lookup_for(tenant: TenantContext) -> Any:
    """For intake: the tenant's accounts among some ids (id → (currency, no_overdraft)), or ``None``
    when the shard cannot be read (the applier checks again)."""

    def lookup(account_ids: set[str]) -> dict[str, tuple[str, bool]] | None:
        try:
            found = LedgerAccount.objects.using(tenant.shard).filter(
                tenant_id=tenant.tenant_id, account_id__in=account_ids
            )
            return {a.account_id: (a.currency, a.no_overdraft) for a in found}
        except DatabaseError:
            logger.warning("shard %s: account check skipped at intake", tenant.shard, exc_info=True)
            return None

    return lookup


# --- Apply-time hook -----------------------------------------------------------------------

# Sets of keys travel as one JSON parameter, unpacked by the server: adapting Python lists of 10,000
# strings element by element cost more client CPU than the queries' server time.
_ACCOUNTS = """
WITH wanted AS (SELECT (e->>0)::uuid AS tenant_id, e->>1 AS account_id FROM json_array_elements(%s::json) e)
SELECT a.tenant_id::text, a.account_id, a.currency, a.no_overdraft, a.balance
FROM ledger_accounts a JOIN wanted ON a.tenant_id = wanted.tenant_id AND a.account_id = wanted.account_id
"""

# Row locks in one sorted order: two appliers never deadlock on the same accounts.
_LOCK_NO_OVERDRAFT = """
WITH wanted AS (SELECT (e->>0)::uuid AS tenant_id, e->>1 AS account_id FROM json_array_elements(%s::json) e)
SELECT a.tenant_id::text, a.account_id, a.balance
FROM ledger_accounts a JOIN wanted ON a.tenant_id = wanted.tenant_id AND a.account_id = wanted.account_id
WHERE a.no_overdraft
ORDER BY a.tenant_id, a.account_id
FOR UPDATE OF a
"""

_REJECTED_BEFORE = """
WITH t AS (SELECT (e->>0)::uuid AS tenant_id, (e->>1)::uuid AS write_id FROM json_array_elements(%s::json) e)
SELECT r.tenant_id::text, r.write_id::text FROM rejected_writes r
JOIN t ON r.tenant_id = t.tenant_id AND r.write_id = t.write_id
"""

# Lookups by (tenant, id) probe each partition's unique index: joining each id's day (as the status
# lookup does) prunes the partitions but costs a write_id_days probe and a re-pruning per row, three times
# as much for a batch of 5,000 transfers with a week of partitions.
_IN_LOG = """
WITH t AS (SELECT (e->>0)::uuid AS tenant_id, (e->>1)::uuid AS write_id FROM json_array_elements(%s::json) e)
SELECT l.tenant_id::text, l.write_id::text FROM write_log l
JOIN t ON l.tenant_id = t.tenant_id AND l.write_id = t.write_id
"""

# The transfers among those given that the log holds, and whether the stored write is this transfer
# (same kind, key and payload) or another write that used its id.
_IN_LOG_AS = """
WITH t AS (SELECT (e->>0)::uuid AS tenant_id, (e->>1)::uuid AS write_id, e->>2 AS key, e->>3 AS payload
           FROM json_array_elements(%s::json) e)
SELECT l.tenant_id::text, l.write_id::text, l.kind,
       l.kind = 'transfer' AND l.key = t.key AND l.payload = t.payload::jsonb
FROM write_log l JOIN t ON l.tenant_id = t.tenant_id AND l.write_id = t.write_id
"""

_ADD_TO_BALANCES = """
UPDATE ledger_accounts a SET balance = a.balance + d.delta
FROM (SELECT (e->>0)::uuid AS tenant_id, e->>1 AS account_id, (e->>2)::numeric AS delta
      FROM json_array_elements(%s::json) e) AS d
WHERE a.tenant_id = d.tenant_id AND a.account_id = d.account_id
"""

AccountKey = tuple[str, str]  # (tenant_id, account_id)
WriteKey = tuple[str, str]  # (tenant_id, write_id)


@dataclass(frozen=True, slots=True)
class Transfer:
    row: StagedRow
    tenant_id: str  # canonical text, as the database returns it
    write_id: str
    debit: str
    credit: str
    amount: int
    currency: str


class _TransferShape(msgspec.Struct):
    debit_account: str
    credit_account: str
    amount: int
    currency: str


_shape = msgspec.json.Decoder(_TransferShape)


@dataclass
class TransferDecision:
    """What ``before_insert`` decided: the rows to leave out of the insert, the rejected ones, and the
    balance moves of the accepted transfers that touch ``no_overdraft`` accounts."""

    drop: set[WriteKey] = field(default_factory=set)
    rejected: list[Rejection] = field(default_factory=list)
    moves: dict[WriteKey, list[tuple[AccountKey, int]]] = field(default_factory=dict)


def _parse(row: StagedRow) -> Transfer | str:
    _, tenant_id, write_id, _, _, payload, _, _ = row
    try:
        shape = _shape.decode(payload)
        tenant, write = canonical_uuid(tenant_id), canonical_uuid(write_id)
    except (msgspec.DecodeError, ValueError, TypeError, AttributeError) as exc:
        return f"Not a transfer: {exc}"
    if shape.amount <= 0:
        return "The amount must be positive."
    return Transfer(row, tenant, write, shape.debit_account, shape.credit_account, shape.amount, shape.currency)


def _raw_key(transfer: Transfer) -> WriteKey:
    """The key ``writes.apply`` drops rows by: the ids exactly as they came in the message."""
    return (transfer.row[1], transfer.row[2])


_json = msgspec.json.Encoder()


def _as_json(values: Any) -> str:
    """Tuples of keys as one JSON array of arrays, for the queries above."""
    return _json.encode(list(values)).decode()


class TransferApplyHook:
    """``writes.apply`` calls this for the ``transfer`` rows of a batch, in the batch's transaction."""

    def before_insert(self, cursor: Any, rows: list[StagedRow]) -> TransferDecision:
        decision = TransferDecision()
        transfers: list[Transfer] = []
        seen_here: set[WriteKey] = set()
        for row in rows:
            parsed = _parse(row)
            if isinstance(parsed, str):
                decision.rejected.append((row, "invalid_write", parsed))
                decision.drop.add((row[1], row[2]))
                continue
            key = (parsed.tenant_id, parsed.write_id)
            if key in seen_here:  # the same transfer twice in one batch: the first one counts
                continue
            seen_here.add(key)
            transfers.append(parsed)
        if not transfers:
            return decision

        wanted = {(t.tenant_id, a) for t in transfers for a in (t.debit, t.credit)}
        cursor.execute(_ACCOUNTS, [_as_json(sorted(wanted))])
        accounts = {
            (tenant, account): (currency, no_overdraft)
            for tenant, account, currency, no_overdraft, _ in cursor.fetchall()
        }
        guarded = sorted(key for key, (_, no_overdraft) in accounts.items() if no_overdraft)
        balances: dict[AccountKey, int] = {}
        if guarded:
            cursor.execute(_LOCK_NO_OVERDRAFT, [_as_json(guarded)])
            balances = {(tenant, account): int(balance or 0) for tenant, account, balance in cursor.fetchall()}

        # Only now, holding the locks, is "already applied or rejected" final for these transfers. A
        # redelivered transfer keeps its first outcome: one rejected stays rejected (it may have been
        # refused for funds it would find now), and one that moved a guarded balance must not move it
        # again. Whether a transfer touching no guarded account is in the log already does not matter
        # here (the insert ignores it by id and it moves no balance), so only those touching a guarded
        # account are looked up in the log.
        cursor.execute(_REJECTED_BEFORE, [_as_json(seen_here)])
        already = {(tenant, write_id) for tenant, write_id in cursor.fetchall()}
        guarded_set = set(guarded)
        touching = [
            (t.tenant_id, t.write_id, t.row[4], t.row[5])
            for t in transfers
            if (t.tenant_id, t.debit) in guarded_set or (t.tenant_id, t.credit) in guarded_set
        ]
        # An id the log holds with other content is not a redelivery: it is reported (the generic
        # insert reports the same for transfers that touch no guarded account).
        taken: dict[WriteKey, str] = {}
        if touching:
            cursor.execute(_IN_LOG_AS, [_as_json(touching)])
            for tenant, write_id, stored_kind, same in cursor.fetchall():
                if same:
                    already.add((tenant, write_id))
                else:
                    taken[(tenant, write_id)] = stored_kind

        for transfer in transfers:
            key = (transfer.tenant_id, transfer.write_id)
            if key in already:
                decision.drop.add(_raw_key(transfer))  # a redelivery: its first outcome stands
                continue
            if key in taken:
                decision.rejected.append((transfer.row, EXISTS_WITH_DIFFERENT_FIELDS, conflict_reason(taken[key])))
                decision.drop.add(_raw_key(transfer))
                continue
            problem = self._problem(transfer, accounts)
            if problem is not None:
                decision.rejected.append((transfer.row, *problem))
                decision.drop.add(_raw_key(transfer))
                continue
            debit = (transfer.tenant_id, transfer.debit)
            credit = (transfer.tenant_id, transfer.credit)
            if debit in balances and balances[debit] < transfer.amount:
                reason = f"Account {transfer.debit!r} holds {balances[debit]}, less than the amount {transfer.amount}."
                decision.rejected.append((transfer.row, "insufficient_funds", reason))
                decision.drop.add(_raw_key(transfer))
                continue
            moves = [
                (account, delta)
                for account, delta in ((debit, -transfer.amount), (credit, transfer.amount))
                if account in balances
            ]
            for account, delta in moves:
                balances[account] += delta
            if moves:
                decision.moves[key] = moves
        return decision

    @staticmethod
    def _problem(transfer: Transfer, accounts: dict[AccountKey, tuple[str, bool]]) -> tuple[str, str] | None:
        if transfer.debit == transfer.credit:
            return "invalid_write", "The debit and credit accounts must differ."
        for account_id in (transfer.debit, transfer.credit):
            found = accounts.get((transfer.tenant_id, account_id))
            if found is None:
                return "unknown_account", f"No account {account_id!r}."
            if found[0] != transfer.currency:
                return "currency_mismatch", f"Account {account_id!r} holds {found[0]}, not {transfer.currency}."
        return None

    def after_insert(self, cursor: Any, decision: TransferDecision) -> None:
        """Commit the accepted transfers' moves on ``no_overdraft`` balances, for the transfers that
        did reach the log (a row the generic path rejected moves nothing)."""
        if not decision.moves:
            return
        cursor.execute(_IN_LOG, [_as_json(decision.moves)])
        inserted = {(tenant, write_id) for tenant, write_id in cursor.fetchall()}
        if len(inserted) != len(decision.moves):
            logger.warning("%d accepted transfer(s) did not reach the log", len(decision.moves) - len(inserted))
        totals: dict[AccountKey, int] = defaultdict(int)
        for key in inserted:
            for account, delta in decision.moves[key]:
                totals[account] += delta
        # If a transfer left out above had funded a later one, the CHECK (balance >= 0) fails the
        # whole batch rather than let a guarded account overdraw.
        changed = [(tenant, account, delta) for (tenant, account), delta in sorted(totals.items()) if delta]
        if changed:
            # Deltas as text: a sum of amounts may pass what a JSON number holds exactly.
            cursor.execute(
                _ADD_TO_BALANCES, [_as_json((tenant, account, str(delta)) for tenant, account, delta in changed)]
            )
