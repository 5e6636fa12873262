"""Gunicorn settings for the API: a few processes, many threads (requests mostly wait on the broker)."""

from __future__ import annotations

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "16"))
# Long enough for the longest long-poll (?wait=30) plus slack.
timeout = 45
graceful_timeout = 10
keepalive = 5
# Recycle workers now and then so a slow leak can never grow without bound.
max_requests = 200_000
max_requests_jitter = 20_000
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
