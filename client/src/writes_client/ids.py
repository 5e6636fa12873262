"""UUIDv7 write ids, made on the producer's side before the first send.

An id is the write's idempotency key: the client makes it once, when the write is captured, and every
retry carries the same one. Version 7 ids sort by creation time, which keeps the log's unique index warm.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> uuid.UUID:
    """A version 7 UUID (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits, of which the
    first 12 count up within one millisecond so that ids made by this process are strictly increasing."""
    global _last_ms, _counter
    random_bits = int.from_bytes(os.urandom(10), "big")
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = random_bits >> 68  # a random start for the 12-bit counter, top bit clear
            _counter &= 0x7FF
        else:
            _counter += 1
            if _counter > 0xFFF:  # more than ~2,000 ids in one millisecond: borrow the next one
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= counter << 64
    value |= 0b10 << 62  # variant
    value |= random_bits & 0x3FFF_FFFF_FFFF_FFFF
    return uuid.UUID(int=value)


def new_write_id() -> str:
    return str(uuid7())
