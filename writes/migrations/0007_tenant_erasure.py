"""Tenant erasure: the log's trigger lets one tenant's DELETE through, and the two tables that record erasures.

``write_log_forbid_change()`` (0002) now allows a DELETE of a row whose tenant is the one named by the
transaction-local setting ``writes.erasing_tenant`` (``SELECT set_config('writes.erasing_tenant', %s, true)``,
done only by ``writes.erasure``). UPDATE stays forbidden, and so does the DELETE of any other tenant's row.
The trigger itself is unchanged.
"""

from __future__ import annotations

import django.db.models.functions.datetime
from django.db import migrations, models

GATED = """
CREATE OR REPLACE FUNCTION write_log_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- An unset setting reads as NULL (or '' once set in this session): never equal to a tenant id.
    IF TG_OP = 'DELETE' AND OLD.tenant_id::text = current_setting('writes.erasing_tenant', true) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'write_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Writes are immutable; record a correcting write instead.';
END
$$;
"""

# 0002's function, as it was.
UNGATED = """
CREATE OR REPLACE FUNCTION write_log_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'write_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Writes are immutable; record a correcting write instead.';
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("writes", "0006_publish_fates")]

    operations = [
        migrations.CreateModel(
            name="ErasedTenant",
            fields=[
                ("tenant_id", models.UUIDField(primary_key=True, serialize=False)),
                ("erased_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
            ],
            options={"db_table": "erased_tenants", "ordering": ["-erased_at"]},
        ),
        migrations.CreateModel(
            name="TenantErasure",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("tenant_id", models.UUIDField(db_index=True)),
                ("scope", models.CharField(default="tenant", max_length=200)),
                ("requested_at", models.DateTimeField()),
                ("completed_at", models.DateTimeField(blank=True, null=True)),
                ("counts", models.JSONField(default=dict)),
            ],
            options={"verbose_name": "tenant erasure", "ordering": ["-requested_at"]},
        ),
        migrations.RunSQL(GATED, UNGATED, hints={"shard_resident": True}),
    ]
