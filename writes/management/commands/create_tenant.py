"""``create_tenant NAME [--json]``: create a tenant and print its id, first API key and shard."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError

from writes.services import api_key_issue, shard_for_logical, tenant_create


class Command(BaseCommand):
    help = "Create a tenant and its first API key (the key is shown only now)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--json", action="store_true", help="Print one JSON line: tenant_id, api_key, shard.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = tenant_create(name=options["name"])
        except IntegrityError as exc:
            raise CommandError(f"A tenant named {options['name']!r} already exists.") from exc
        issued = api_key_issue(tenant=tenant, label="created with create_tenant")
        shard = shard_for_logical(tenant.logical_shard)
        if options["json"]:
            self.stdout.write(json.dumps({"tenant_id": str(tenant.id), "api_key": issued.secret, "shard": shard}))
            return
        self.stdout.write(f"tenant:  {tenant.name} ({tenant.id})")
        self.stdout.write(f"shard:   {shard} (logical {tenant.logical_shard})")
        self.stdout.write(f"api key: {issued.secret}  (shown only now)")
