"""Settings for the test suite: the base settings on queues of their own, so a running stack's
messages and the tests' never mix."""

from __future__ import annotations

import os

os.environ.setdefault("WRITES_QUEUE_PREFIX", "test.writes")

from config.settings import *  # noqa: F403

# Django's views run in a thread per request under the ASGI server the tests start: each request's
# connection is closed when it ends rather than kept by a thread that is gone.
CONN_MAX_AGE = 0
for _database in DATABASES.values():  # noqa: F405
    _database["CONN_MAX_AGE"] = 0

# The test client's own request lines are noise in a failing test's output.
LOGGING.setdefault("loggers", {})["httpx"] = {"level": "WARNING"}  # noqa: F405
