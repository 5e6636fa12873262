"""Server-side write ids: UUIDv7 (time-ordered, so the log's unique index stays append-friendly)."""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any


def uuid7() -> str:
    """A UUIDv7 as its canonical string: 48 bits of Unix milliseconds, then 74 random bits."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


# Byte tables that stamp the version (7) and the variant (0b10) over random bytes, applied with
# bytes.translate to every id of a batch at once.
_VERSION_7 = bytes(0x70 | (b & 0x0F) for b in range(256))
_VARIANT_RFC = bytes(0x80 | (b & 0x3F) for b in range(256))


def uuid7_many(count: int) -> list[str]:
    """``count`` UUIDv7 strings sharing one millisecond, built with whole-batch byte operations: about
    ten times cheaper than ``uuid7()`` in a loop, which mattered for 1,000-event requests."""
    if count <= 0:
        return []
    millis = (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")
    buffer = bytearray(os.urandom(16 * count))
    for offset in range(6):
        buffer[offset::16] = millis[offset : offset + 1] * count
    buffer[6::16] = bytes(buffer[6::16]).translate(_VERSION_7)
    buffer[8::16] = bytes(buffer[8::16]).translate(_VARIANT_RFC)
    text = buffer.hex()
    hexes = [text[i : i + 32] for i in range(0, 32 * count, 32)]
    return [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in hexes]


_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_uuid(value: Any) -> str:
    """``value`` as PostgreSQL prints a uuid (``ValueError`` when it is not one). Ids from the API are
    canonical already: one regular-expression match, no parse."""
    if isinstance(value, str) and _CANONICAL.fullmatch(value):
        return value
    return str(uuid.UUID(str(value)))
