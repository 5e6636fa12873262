"""The write path: validate, publish with a confirm, bulk-apply into each shard's append-only log."""
