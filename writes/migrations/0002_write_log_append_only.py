"""The write log is insert-only, enforced by the database: UPDATE and DELETE raise.

Corrections are new writes. TRUNCATE stays possible for an operator who resets a whole shard.
"""

from __future__ import annotations

from django.db import migrations

FORBID = """
CREATE FUNCTION write_log_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'write_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Writes are immutable; record a correcting write instead.';
END
$$;
CREATE TRIGGER write_log_append_only
    BEFORE UPDATE OR DELETE ON write_log
    FOR EACH ROW EXECUTE FUNCTION write_log_forbid_change();
"""

ALLOW = """
DROP TRIGGER IF EXISTS write_log_append_only ON write_log;
DROP FUNCTION IF EXISTS write_log_forbid_change();
"""


class Migration(migrations.Migration):
    dependencies = [("writes", "0001_initial")]

    operations = [migrations.RunSQL(FORBID, ALLOW, hints={"shard_resident": True})]
