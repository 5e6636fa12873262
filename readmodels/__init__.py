"""The read side: projections derived from the shards' write logs, their repair and their API."""
