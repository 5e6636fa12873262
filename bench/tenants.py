"""Creates the benchmark's tenants: for each name, one tenant per shard, so every shard gets load.

Chat scenarios (names starting ``chat``) also get ``CHAT_CONVERSATIONS`` conversations of
``CHAT_MEMBERS`` members each; ledger scenarios (``ledger``) get an ``equity`` account,
``LEDGER_ACCOUNTS`` ordinary accounts and ``LEDGER_GUARDED`` ``no_overdraft`` ones, all in EUR.
Memberships go through the shard's own applier and projector, as if posted before the run.

Run by the bench in the bench's environment: ``python -m bench.tenants NAME ...``; prints JSON.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import django

CHAT_CONVERSATIONS = 20
CHAT_MEMBERS = 50
LEDGER_ACCOUNTS = 100
LEDGER_GUARDED = 20


def _chat_setup(tenant_id: str, shard: str) -> None:
    from readmodels.projector import project_shard
    from writes.apply import apply_batch

    now = datetime.now(UTC).isoformat()
    members = json.dumps({"user_ids": [f"user-{m}" for m in range(CHAT_MEMBERS)]})
    rows = [[str(uuid.uuid4()), f"room-{c}", members, now] for c in range(CHAT_CONVERSATIONS)]
    apply_batch(shard=shard, groups=[[tenant_id, "member", now, rows]])
    project_shard(shard)


def _ledger_setup(tenant: Any, shard: str) -> None:
    from writes.ledger import account_create
    from writes.routing import TenantContext

    context = TenantContext(tenant_id=tenant.id, shard=shard)
    account_create(tenant=context, account_id="equity", currency="EUR", no_overdraft=False)
    for n in range(LEDGER_ACCOUNTS):
        account_create(tenant=context, account_id=f"acct-{n}", currency="EUR", no_overdraft=False)
    for n in range(LEDGER_GUARDED):
        account_create(tenant=context, account_id=f"guard-{n}", currency="EUR", no_overdraft=True)


def create(names: list[str]) -> list[dict[str, str]]:
    from django.conf import settings

    from writes.services import api_key_issue, shard_for_logical, tenant_create

    created = []
    for name in names:
        for shard in settings.SHARD_ALIASES:
            for attempt in range(500):
                tenant = tenant_create(name=f"{name}-{shard}-{attempt}")
                if shard_for_logical(tenant.logical_shard) == shard:
                    key = api_key_issue(tenant=tenant, label="bench").secret
                    if name.startswith("chat"):
                        _chat_setup(str(tenant.id), shard)
                    elif name.startswith("ledger"):
                        _ledger_setup(tenant, shard)
                    created.append({"scenario": name, "shard": shard, "tenant_id": str(tenant.id), "api_key": key})
                    break
                tenant.delete()
    return created


def main() -> None:
    django.setup()
    sys.stdout.write(json.dumps(create(sys.argv[1:])))


if __name__ == "__main__":
    main()
