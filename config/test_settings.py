"""Settings for the test suite: the base settings on queues of their own, so a running stack's
messages and the tests' never mix."""

from __future__ import annotations

import os

os.environ.setdefault("WRITES_QUEUE_PREFIX", "test.writes")

from config.settings import *  # noqa: F403
