"""OpenAPI components of the read API, as msgspec structs registered with the write API's schema hook
(``writes.api.openapi.DOCUMENTED``), so the whole API is documented in one schema."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from writes.api import openapi
from writes.api.openapi import AsOf


class EventBucket(msgspec.Struct):
    name: str
    #: Start of the UTC hour or day.
    start: datetime
    count: int


class EventStats(msgspec.Struct):
    interval: Literal["hour", "day"]
    start: datetime
    end: datetime
    name: str | None
    #: Non-empty buckets only, by start then name; a missing bucket counted zero events.
    buckets: list[EventBucket]
    as_of: AsOf
    #: How long ago the oldest write not yet counted was applied; 0 when fully caught up.
    lag_seconds: float
    #: The ``min_position`` asked for, if any.
    min_position: int | None
    #: True when ``min_position`` was not reached within ``wait``: the answer is what there was.
    timed_out: bool


for struct in (EventBucket, EventStats):
    if struct not in openapi.DOCUMENTED:
        openapi.DOCUMENTED.append(struct)
