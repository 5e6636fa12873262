"""Settings of the processes the benchmark starts: production settings plus the naive baselines.

The baselines (``bench.naive``) exist only here, so production code and URLs never carry them.
"""

from __future__ import annotations

from config.production import *  # noqa: F403
from config.production import DATABASE_ROUTERS, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.naive"]
# The baselines' table lives on the shards; this router only decides their migrations.
DATABASE_ROUTERS = ["bench.naive.routing.NaiveMigrationRouter", *DATABASE_ROUTERS]
ROOT_URLCONF = "bench.urls"
