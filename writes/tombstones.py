"""Erased tenants' tombstones (``erased_tenants``), read by the applier: kept apart from
``writes.erasure``, which needs the applier itself."""

from __future__ import annotations

import uuid
from typing import Any


def erased_among(cursor: Any, tenant_ids: set[str]) -> set[str]:
    """The ids among ``tenant_ids`` (spelled as given) that were erased on the cursor's shard.

    For the applier, inside its transaction and under the append lock: an erasure writes its tombstone
    under that lock, so an append either committed before the erasure began (and is deleted by it) or
    sees the tombstone. Ids that are no UUID are never erased ones.
    """
    canonical: dict[str, set[str]] = {}
    for tenant_id in tenant_ids:
        try:
            canonical.setdefault(str(uuid.UUID(str(tenant_id))), set()).add(tenant_id)
        except (ValueError, TypeError, AttributeError):
            continue
    if not canonical:
        return set()
    cursor.execute("SELECT tenant_id::text FROM erased_tenants WHERE tenant_id = ANY(%s::uuid[])", [list(canonical)])
    return {given for (found,) in cursor.fetchall() for given in canonical[found]}
