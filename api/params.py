"""Every query parameter and path segment the API takes, parsed in one place with one set of rules.

Used by the edge's hot routes and by Django's views alike, so ``wait``, ``min_position`` and the
path ids mean the same everywhere. Each parser raises ``ParamError`` (a 400 listing the field).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ValidationError

from writes.schemas import ValidationFailed, check_id_text

MAX_POSITION = 2**63 - 1


class ParamError(ValidationError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__({field: message})


def _ascii_digits(raw: str) -> bool:
    # str.isdigit() accepts "²" and other digits int() refuses.
    return raw.isascii() and raw.isdigit()


def int_param(raw: str | None, field: str, *, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    if not _ascii_digits(raw) or len(raw) > 19 or not low <= int(raw) <= high:
        raise ParamError(field, f"An integer from {low} to {high}.")
    return int(raw)


def min_position_param(raw: str | None) -> int | None:
    """``min_position``: a log position (a write's ``position``), or absent."""
    if raw is None or raw == "":
        return None
    return int_param(raw, "min_position", default=0, low=0, high=MAX_POSITION)


def wait_param(raw: str | None, *, default: float, limit: float) -> float:
    """``wait``: seconds from 0 to ``limit``."""
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= limit:  # NaN fails this too
        raise ParamError("wait", f"A number of seconds from 0 to {limit:g}.")
    return value


def status_wait_param(raw: str | None) -> float:
    """``GET /api/v1/writes/{id}?wait=``: default 0 (answer at once)."""
    return wait_param(raw, default=0.0, limit=float(settings.WRITES_STATUS_MAX_WAIT_SECONDS))


def read_wait_param(raw: str | None) -> float:
    """A read's ``wait`` (with ``min_position``): default and limit ``READMODELS_MAX_WAIT_SECONDS``."""
    limit = float(settings.READMODELS_MAX_WAIT_SECONDS)
    return wait_param(raw, default=limit, limit=limit)


def write_id_param(raw: str) -> uuid.UUID | None:
    """A write id from a path; ``None`` if it cannot be one (the caller answers 404)."""
    if len(raw) > 64:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def path_id(value: str, field_name: str) -> str:
    """A conversation, user or account id from a path: the limits of ids in a body."""
    problem = check_id_text(value, field_name)
    if problem is not None:
        raise ValidationFailed(f"Invalid {field_name}.", [problem])
    return value


def with_timed_out(freshness: dict[str, Any], min_position: int | None) -> dict[str, Any]:
    """A read's freshness fields plus ``timed_out``: whether it still misses ``min_position``."""
    reached = min_position is None or freshness["as_of"]["position"] >= min_position
    return {**freshness, "timed_out": not reached}
