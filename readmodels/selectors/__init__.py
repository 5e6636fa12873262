"""Selectors: the read endpoints' queries against the read models (never the log's rows)."""
