"""Settings for the test suite: the base settings on queues of their own, so a running stack's
messages and the tests' never mix."""

from __future__ import annotations

import os

os.environ.setdefault("WRITES_QUEUE_PREFIX", "test.writes")
# As in the API processes: Django's requests (a thread each under the ASGI server the tests start)
# take connections from a pool instead of opening one per request.
os.environ.setdefault("DATABASE_POOL_MAX_SIZE", "8")

from config.settings import *  # noqa: F403

# The test client's own request lines are noise in a failing test's output.
LOGGING.setdefault("loggers", {})["httpx"] = {"level": "WARNING"}  # noqa: F405
