"""Event statistics over HTTP: validate the parameters, call one selector, answer with the counts and
how fresh they are (the edge has already waited for ``min_position``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.http import QueryDict
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import openapi
from api.params import ParamError, int_param, min_position_param, read_wait_param
from api.views.health import tenant_of
from readmodels.projections.events import day_of, hour_of
from readmodels.selectors.events import Interval, event_counts

BUCKET_LENGTH: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
DEFAULT_SPAN: dict[str, timedelta] = {"hour": timedelta(hours=24), "day": timedelta(days=30)}
MAX_BUCKETS = 10_000
MAX_NAME_LENGTH = 200

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StatsQuery:
    interval: Interval
    start: datetime
    end: datetime
    name: str | None
    min_position: int | None
    wait: float
    limit: int = MAX_BUCKETS
    #: The last bucket of the previous page: (its start, its name).
    after: tuple[datetime, str] | None = None


def _after(raw: str, errors: dict[str, str]) -> tuple[datetime, str] | None:
    """``after``: a page's ``next_after``, ``<bucket start in Unix seconds>:<name>``."""
    seconds, _, name = raw.partition(":")
    problem = "The next_after of the previous page."
    if not (seconds.isascii() and seconds.isdigit() and len(seconds) <= 12) or len(name) > MAX_NAME_LENGTH:
        errors["after"] = problem
        return None
    if "\x00" in name:
        errors["after"] = problem
        return None
    try:
        moment = datetime.fromtimestamp(int(seconds), UTC)
    except (ValueError, OverflowError, OSError):
        moment = LATEST
    if not EARLIEST <= moment < LATEST:
        errors["after"] = problem
        return None
    return moment, name


def next_after(bucket_start: datetime, name: str) -> str:
    return f"{int(bucket_start.timestamp())}:{name}"


# An unencoded "+" in a query string arrives as a space: "…T10:00:00 02:00" meant "+02:00".
_SPACE_FOR_PLUS = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$")


# Moments outside these bounds are refused: near the ends of ``datetime``'s range, converting to UTC
# or stepping back a default span would overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _moment(raw: str, field: str, errors: dict[str, str]) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(_SPACE_FOR_PLUS.sub(r"\1+\2", raw.strip()))
        moment = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        errors[field] = "An ISO 8601 date or date-time, e.g. 2026-01-31T13:00:00Z."
        return None
    if not EARLIEST <= moment < LATEST:
        errors[field] = f"Between {EARLIEST.year} and {LATEST.year}."
        return None
    return moment


def parse_stats_query(params: QueryDict, *, now: datetime) -> StatsQuery:
    """Every parameter checked at once, so a 400 lists every problem."""
    errors: dict[str, str] = {}
    interval = params.get("interval", "hour")
    if interval not in BUCKET_LENGTH:
        errors["interval"] = "One of: hour, day."
        interval = "hour"
    name = params.get("name") or None
    if name is not None and len(name) > MAX_NAME_LENGTH:
        errors["name"] = f"At most {MAX_NAME_LENGTH} characters."
    elif name is not None and "\x00" in name:
        errors["name"] = "NUL characters (\\u0000) cannot be stored."
    raw_end, raw_start = params.get("end"), params.get("start")
    end = _moment(raw_end, "end", errors) if raw_end is not None else now
    start = _moment(raw_start, "start", errors) if raw_start is not None else None
    if start is None and end is not None and "start" not in errors:
        start = end - DEFAULT_SPAN[interval]
    if start is not None and end is not None:
        # Whole buckets: the one holding ``start`` is included.
        start = hour_of(start) if interval == "hour" else day_of(start)
        if start >= end:
            errors["end"] = "Must be after start."
        elif (end - start) / BUCKET_LENGTH[interval] > MAX_BUCKETS:
            errors["start"] = f"At most {MAX_BUCKETS} {interval}s between start and end."
    min_position = _checked(lambda: min_position_param(params.get("min_position")), errors)
    wait = _checked(lambda: read_wait_param(params.get("wait")), errors) or 0.0
    limit = _checked(
        lambda: int_param(params.get("limit"), "limit", default=MAX_BUCKETS, low=1, high=MAX_BUCKETS), errors
    )
    raw_after = params.get("after")
    after = _after(raw_after, errors) if raw_after else None
    if errors:
        raise ValidationError(errors)
    assert start is not None
    assert end is not None
    assert limit is not None
    return StatsQuery(interval, start, end, name, min_position, wait, limit, after)  # type: ignore[arg-type]


def _checked(parse: Callable[[], T], errors: dict[str, str]) -> T | None:
    """``parse()``, with its problem added to ``errors`` instead of raised."""
    try:
        return parse()
    except ParamError as exc:
        detail: Any = exc.detail
        errors.update(
            {field: str(message[0] if isinstance(message, list) else message) for field, message in detail.items()}
        )
        return None


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class EventStatsView(APIView):
    @extend_schema(
        operation_id="stats_events",
        summary="Event counts per hour or day",
        description=(
            "Counts of the tenant's events per UTC hour or day (by the event's `timestamp`), from the read "
            "model. `as_of` and `lag_seconds` say how fresh it is. With `min_position=P` (a write's "
            "`position` from `GET /api/v1/writes/{id}`), waits up to `wait` seconds until the counts "
            "include that write, then answers; `timed_out` says if they do not yet."
        ),
        parameters=[
            OpenApiParameter("name", str, description="Only this event name (default: every name)."),
            OpenApiParameter("interval", str, enum=["hour", "day"], description="Bucket size (default hour)."),
            OpenApiParameter(
                "start",
                str,
                description="ISO 8601; the bucket holding it is the first (default: 24 hours or 30 days before end).",
            ),
            OpenApiParameter("end", str, description="ISO 8601, exclusive (default: now)."),
            OpenApiParameter(
                "limit", int, description=f"At most this many buckets, 1 to {MAX_BUCKETS} (default {MAX_BUCKETS})."
            ),
            OpenApiParameter("after", str, description="The `next_after` of the previous page, for the next one."),
            OpenApiParameter("min_position", int, description="Wait until the counts include this log position."),
            OpenApiParameter(
                "wait", float, description="With min_position: wait at most this long (0 to 30, default 30)."
            ),
        ],
        responses={200: openapi.response_of("EventStats"), **openapi.ERROR_RESPONSES},
    )
    def get(self, request: Request) -> Response:
        query = parse_stats_query(request.query_params, now=timezone.now())
        tenant = tenant_of(request)
        read = event_counts(
            shard=tenant.shard,
            tenant_id=tenant.tenant_id,
            interval=query.interval,
            start=query.start,
            end=query.end,
            name=query.name,
            limit=query.limit + 1,
            after=query.after,
        )
        buckets = read.buckets[: query.limit]
        has_more = len(read.buckets) > query.limit
        body: dict[str, Any] = {
            "interval": query.interval,
            "start": _iso(query.start),
            "end": _iso(query.end),
            "name": query.name,
            "buckets": [{"name": b.name, "start": _iso(b.start), "count": b.count} for b in buckets],
            "has_more": has_more,
            "next_after": next_after(buckets[-1].start, buckets[-1].name) if has_more else None,
            "as_of": {"position": read.freshness.position, "time": _iso(read.freshness.time)},
            "lag_seconds": read.freshness.lag_seconds,
            "min_position": query.min_position,
            "timed_out": query.min_position is not None and read.freshness.position < query.min_position,
        }
        return Response(body)
