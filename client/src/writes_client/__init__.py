"""A client for the write absorber's HTTP API: batching, gzip, and retries that keep their ids.

``Client`` (threads) and ``AsyncClient`` (asyncio) capture events, chat messages and ledger transfers,
give each a UUIDv7 id at once, and deliver them in gzipped batches, retrying with the same ids.
"""

from __future__ import annotations

from writes_client.aio import AsyncClient
from writes_client.core import Accepted, BufferFull, ClientClosed, Options, Stats, WriteStatus
from writes_client.delivery import Dropped, RetryPolicy
from writes_client.ids import uuid7
from writes_client.sync import Client
from writes_client.writes import InvalidWrite

__version__ = "0.1.0"

__all__ = [
    "Accepted",
    "AsyncClient",
    "BufferFull",
    "Client",
    "ClientClosed",
    "Dropped",
    "InvalidWrite",
    "Options",
    "RetryPolicy",
    "Stats",
    "WriteStatus",
    "__version__",
    "uuid7",
]
