"""Creates the benchmark's tenants: for each name, one tenant per shard, so every shard gets load.

Run by the bench in the bench's environment: ``python -m bench.tenants NAME ...``; prints JSON.
"""

from __future__ import annotations

import json
import sys

import django


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
                    created.append({"scenario": name, "shard": shard, "tenant_id": str(tenant.id), "api_key": key})
                    break
                tenant.delete()
    return created


def main() -> None:
    django.setup()
    sys.stdout.write(json.dumps(create(sys.argv[1:])))


if __name__ == "__main__":
    main()
