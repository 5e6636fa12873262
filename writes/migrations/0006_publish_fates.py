"""``publish_fates``: one row per published message, claimed by the applier or abandoned by the API."""

from __future__ import annotations

from django.db import migrations

CREATE = """
CREATE TABLE publish_fates (
    message_id uuid PRIMARY KEY,
    fate text NOT NULL CHECK (fate IN ('applied', 'abandoned')),
    decided_at timestamptz NOT NULL DEFAULT now()
);
"""

DROP = "DROP TABLE IF EXISTS publish_fates;"


class Migration(migrations.Migration):
    dependencies = [("writes", "0005_notify_api_key_changes")]

    operations = [migrations.RunSQL(CREATE, DROP, hints={"shard_resident": True})]
