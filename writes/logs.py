"""Structured logs: one JSON object per line in production, ``key=value`` after the message locally.

Every record carries the fields passed with ``extra=`` (tenant, shard, batch_size, write_ids, …) and,
inside a request or task, the current tenant and shard. API keys and URL passwords are masked.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_API_KEY = re.compile(r"wk_[A-Za-z0-9_\-]{6,}")
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://[^:/@\s]+):[^@/\s]+@", re.IGNORECASE)


def redact(text: str) -> str:
    if "wk_" in text:
        text = _API_KEY.sub("wk_***", text)
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\g<scheme>:***@", text)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def context_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: _clean(value) for key, value in vars(record).items() if key not in _STANDARD}


class TenantContextFilter(logging.Filter):
    """Adds the request's or task's tenant and shard to records that do not name them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            from writes.routing import current_tenant  # late: logging is configured before apps load
        except Exception:
            return True
        context = current_tenant.get()
        if context is not None:
            if not hasattr(record, "tenant"):
                record.tenant = str(context.tenant_id)
            if not hasattr(record, "shard"):
                record.shard = context.shard
        return True


class RedactSecrets(logging.Filter):
    """Masks API keys and URL passwords in the message itself (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "process": record.process,
            **context_fields(record),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class ReadableFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        fields = context_fields(record)
        if fields:
            line += "  " + " ".join(f"{key}={_readable(value)}" for key, value in fields.items())
        return line


def _readable(value: Any) -> str:
    if isinstance(value, list) and len(value) > 5:
        return ",".join(map(str, value[:5])) + f",…(+{len(value) - 5})"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
