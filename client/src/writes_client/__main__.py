"""``python -m writes_client``: the command line."""

from __future__ import annotations

import sys

from writes_client.cli import main

sys.exit(main())
