"""Every change to API keys, tenants or the shard map notifies ``api_keys_changed`` on COMMIT.

API processes cache keys in memory and drop their cache on this notification, so a revocation (from
the admin, a command or plain SQL) takes effect everywhere within moments, with no per-request query.
"""

from __future__ import annotations

from django.db import migrations

TABLES = ["writes_apikey", "writes_tenant", "writes_shardmap"]

FUNCTION = """
CREATE FUNCTION writes_notify_api_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('api_keys_changed', '');
    RETURN NULL;
END
$$;
"""

TRIGGERS = "".join(
    f"CREATE TRIGGER {table}_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
    "FOR EACH STATEMENT EXECUTE FUNCTION writes_notify_api_keys_changed();\n"
    for table in TABLES
)

DROP = "".join(f"DROP TRIGGER IF EXISTS {table}_notify ON {table};\n" for table in TABLES) + (
    "DROP FUNCTION IF EXISTS writes_notify_api_keys_changed();"
)


class Migration(migrations.Migration):
    dependencies = [("writes", "0004_moved_logical_shards")]

    operations = [migrations.RunSQL(FUNCTION + TRIGGERS, DROP, hints={"shard_resident": False})]
