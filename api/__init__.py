"""The HTTP API in one place: the ASGI edge for the hot routes (``api.edge``), Django's views for
the rest (``api.views``), and what both share: keys, parameters, throttling, errors, the schema."""
