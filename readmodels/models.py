"""Read-model tables. Every model here lives on the shards (the router sends the whole app there)."""

from __future__ import annotations
