"""Settings for every environment, read from environment variables with working local defaults.

Production adds its checks in ``config.production``; nothing here is domain logic.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext

# Lets ModelAdmin[...] and QuerySet[...] be subscripted at run time, as the type checker sees them.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, "1" if default else "0").strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = env("SECRET_KEY", "local-development-only-not-secret")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in env("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "writes",
    "readmodels",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "api.middleware.RequestMetricsMiddleware",
    "api.middleware.TenantContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Databases: a control database and N shard databases ------------------------------------
# DATABASE_URL is the control database (tenants, API keys, shard map, auth, admin).
# SHARD_DATABASE_URLS lists the shard databases in shard order: the first is alias shard_0.
DATABASE_URL = env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/writes_control")
# A URL may itself hold commas (a primary and its standbys, see ``database``): a comma separates two
# URLs only where a new scheme follows it.
SHARD_DATABASE_URLS = [
    url.strip()
    for url in re.split(
        r",(?=\s*[a-z][a-z0-9+.-]*://)",
        env(
            "SHARD_DATABASE_URLS",
            "postgres://postgres@127.0.0.1:5432/writes_shard_0,postgres://postgres@127.0.0.1:5432/writes_shard_1",
        ),
    )
    if url.strip()
]
CONN_MAX_AGE = env_int("CONN_MAX_AGE", 600)
# A psycopg connection pool per database of this size instead of one connection per thread. The API
# sets it (``serve_api``): under ASGI each Django request runs in a thread of its own, which must not
# keep a connection of its own. Workers keep one persistent connection each.
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 0)


def database(url: str) -> dict[str, Any]:
    """A Django database from a URL. The URL may name several servers, a primary and its standbys
    (``postgres://user@primary:5432,standby:5432/db?target_session_attrs=read-write``): HOST and PORT
    become libpq's comma-separated lists, and libpq connects to the first that qualifies."""
    pooled = DATABASE_POOL_MAX_SIZE > 0
    scheme, _, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    servers, slash, path = location.partition("/")
    hosts, ports = [], []
    for server in servers.split(","):
        host, colon, port = server.rpartition(":") if not server.endswith("]") else (server, "", "")
        hosts.append(host if colon else server)
        ports.append(port if colon else "")
    first = f"{hosts[0]}:{ports[0]}" if ports[0] else hosts[0]
    config: dict[str, Any] = dict(
        # Health checks on with a pool too: Django then has the pool check a connection before lending
        # it, so one the server ended while it sat there (a restart) is replaced, not handed to a request.
        dj_database_url.parse(
            f"{scheme}://{credentials}{at}{first}{slash}{path}",
            conn_max_age=0 if pooled else CONN_MAX_AGE,
            conn_health_checks=True,
        )
    )
    if len(hosts) > 1:
        config["HOST"] = ",".join(hosts)
        config["PORT"] = ",".join(port or "5432" for port in ports)
    options = config.setdefault("OPTIONS", {})
    options["connect_timeout"] = env_int("DATABASE_CONNECT_TIMEOUT", 3)
    if pooled:
        options["pool"] = {"min_size": 0, "max_size": DATABASE_POOL_MAX_SIZE, "timeout": 5}
    return config


DATABASES: dict[str, dict[str, Any]] = {"default": database(DATABASE_URL)}
SHARD_ALIASES: list[str] = []
for index, url in enumerate(SHARD_DATABASE_URLS):
    alias = f"shard_{index}"
    SHARD_ALIASES.append(alias)
    DATABASES[alias] = database(url)

DATABASE_ROUTERS = ["writes.routing.ShardRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Broker and Celery ---------------------------------------------------------------------
# One URL, or every node of a cluster separated by ";" (amqp://…@node1//;amqp://…@node2//): Celery,
# kombu and the API's publisher try them in turn and fail over to the next when one goes away.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
CELERY_BROKER_CONNECTION_TIMEOUT = env_float("CELERY_BROKER_CONNECTION_TIMEOUT", 2.0)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A task that fails for good is rejected, not acked, so the quorum queue dead-letters it.
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = False
CELERY_TASK_ACKS_ON_FAILURE = False
CELERY_TASK_IGNORE_RESULT = True
# Quorum queues replicate every ack through their log before the consumer gets more credit, so a
# prefetch of 2 capped a worker at a few dozen messages/s on a busy machine (the queue grew while
# the worker sat idle). 16 keeps the pipe full; messages are batches, so memory stays bounded.
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 16)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Remote control (celery inspect/control) gives each worker an exclusive "pidbox" queue. On a broker
# cluster, after the node holding a worker's connection dies, the worker reconnects to another node
# before that exclusive queue is gone and stops with RESOURCE_LOCKED (seen in the broker node kill
# fault test). Turn it off (0) on a cluster; writes_status and the operations page do not need it.
CELERY_WORKER_ENABLE_REMOTE_CONTROL = env_bool("WORKER_REMOTE_CONTROL", True)
# Celery's Django fix-up closes every database connection before and after each task unless this is
# set: a new PostgreSQL connection per batch cost a fifth of a worker's time. A connection that died
# meanwhile fails its statement with OperationalError, which ``with_shard_retries`` closes and retries.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)
CELERY_ACCEPT_CONTENT = ["json", "application/x-writes-msgpack"]
CELERY_TASK_SERIALIZER = "json"
CELERY_TIMEZONE = "UTC"
CELERY_TASK_DEFAULT_QUEUE = env("WRITES_QUEUE_PREFIX", "writes") + ".maintenance"
# --- Workers: the batching apply consumer (writes/consumer.py) --------------------------------
# A worker consumes its shard queues itself and applies several prefetched messages in one
# transaction: up to this many writes, or what arrived within this wait after the first message.
WRITES_APPLY_BATCHING = env_bool("WRITES_APPLY_BATCHING", True)
# 5,000 rather than 20,000: under steady load a transaction's size sets the lag (a write waits for the
# transaction ahead of it and then its own), and the per-transaction cost is small beside 5,000 rows.
WRITES_APPLY_MAX_ROWS = env_int("WRITES_APPLY_MAX_ROWS", 5_000)
WRITES_APPLY_MAX_WAIT_SECONDS = env_float("WRITES_APPLY_MAX_WAIT_SECONDS", 0.1)
# Messages the broker may hand a shard consumer before it acks (AMQP prefetch count; RabbitMQ has no
# limit in bytes). 128 lets a batch gather 128 small messages, and bounds what a worker holds when
# messages are large (128 of the API's largest, 10,000 writes, are about 130 MB).
WRITES_APPLY_PREFETCH = env_int("WRITES_APPLY_PREFETCH", 128)
# A combined batch failing for a non-connection reason this many times is split into its messages,
# each then retried up to writes.tasks.MAX_TRANSIENT_ATTEMPTS times before it is dead-lettered.
WRITES_APPLY_COMBINED_ATTEMPTS = env_int("WRITES_APPLY_COMBINED_ATTEMPTS", 2)
# The pool ``make run``, docker-compose and the bench start workers with (see README, Worker layout).
WORKER_POOL = env("WORKER_POOL", "solo")
CELERY_TASK_DEFAULT_EXCHANGE = env("WRITES_QUEUE_PREFIX", "writes")
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    # The projector also runs after every applied batch; this is the safety net (e.g. for a trigger
    # that could not be sent).
    "project-all": {"task": "readmodels.project_all", "schedule": env_float("PROJECT_ALL_EVERY_SECONDS", 5.0)},
    # Recompute the recent window of every projection from the log and fix any drift.
    "repair-all": {"task": "readmodels.repair_all", "schedule": env_float("REPAIR_ALL_EVERY_SECONDS", 3600.0)},
    # Forget which published messages were applied or abandoned once none can come back (writes/fates.py).
    "prune-publish-fates": {"task": "writes.prune_publish_fates", "schedule": 86400.0},
    # The log's lifecycle: partitions created ahead, then retention (with archives) applied.
    "maintain-log": {"task": "writes.maintain_log", "schedule": env_float("MAINTAIN_LOG_EVERY_SECONDS", 3600.0)},
}

# --- The write path ------------------------------------------------------------------------
# Every shard gets a quorum queue "<prefix>.<alias>"; tests use their own prefix.
WRITES_QUEUE_PREFIX = env("WRITES_QUEUE_PREFIX", "writes")
WRITES_QUEUE_MAX_LENGTH = env_int("WRITES_QUEUE_MAX_LENGTH", 100_000)
WRITES_QUEUE_MAX_BYTES = env_int("WRITES_QUEUE_MAX_BYTES", 2 * 1024**3)
WRITES_QUEUE_DELIVERY_LIMIT = env_int("WRITES_QUEUE_DELIVERY_LIMIT", 20)
# Replicas of each quorum queue (x-quorum-initial-group-size): 3 on a three-node cluster. 0 leaves it to
# the broker (a replica on every node). Fixed when a queue is created: the broker refuses a later
# declaration with another value, so change it only with new queues (or a new WRITES_QUEUE_PREFIX).
WRITES_QUEUE_REPLICAS = env_int("WRITES_QUEUE_REPLICAS", 0)
# The three above reach the broker as a policy (writes/queue_policies.py), written by `prepare_queues`
# through the management HTTP API (default: port 15672 on the broker's host, the broker's user) or, with a
# local broker and no management plugin, rabbitmqctl (RABBITMQCTL_NODE: that node's name, to use it always).
RABBITMQ_MANAGEMENT_URL = env("RABBITMQ_MANAGEMENT_URL", "")
RABBITMQCTL_NODE = env("RABBITMQCTL_NODE", "")
# The coalescing publisher waits at most this long to gather writes into one message ...
WRITES_PUBLISH_LINGER_SECONDS = env_float("WRITES_PUBLISH_LINGER_SECONDS", 0.002)
# ... or until this many writes, or this many bytes of request bodies, are waiting (RabbitMQ refuses
# messages over its max_message_size, 128 MiB by default).
WRITES_PUBLISH_MAX_WRITES = env_int("WRITES_PUBLISH_MAX_WRITES", 10_000)
WRITES_PUBLISH_MAX_BYTES = env_int("WRITES_PUBLISH_MAX_BYTES", 16 * 1024 * 1024)
# Messages of one API process awaiting their confirms at once (pipelined, not one at a time).
WRITES_PUBLISH_MAX_IN_FLIGHT = env_int("WRITES_PUBLISH_MAX_IN_FLIGHT", 16)
# A request gives up (503) when its write is not confirmed by the broker within this time; a write
# so refused is never applied (see writes/fates.py).
WRITES_PUBLISH_TIMEOUT_SECONDS = env_float("WRITES_PUBLISH_TIMEOUT_SECONDS", 1.5)
WRITES_MAX_BATCH_ITEMS = 10_000
WRITES_MAX_BODY_BYTES = 5 * 1024 * 1024
WRITES_STATUS_MAX_WAIT_SECONDS = 30
# Per-tenant request rate, per API process (token bucket; 0 turns it off). The defaults sit far above
# a busy client's batched load (1,000-event batches at tens of requests a second) and only stop floods.
WRITES_RATE_LIMIT_PER_SECOND = env_float("WRITES_RATE_LIMIT_PER_SECOND", 2000.0)
WRITES_RATE_LIMIT_BURST = env_float("WRITES_RATE_LIMIT_BURST", 4000.0)
DATA_UPLOAD_MAX_MEMORY_SIZE = WRITES_MAX_BODY_BYTES + 1

# --- The read side -------------------------------------------------------------------------
# Repair (beat and `manage.py repair` without --since) recomputes this many hours back from now.
READMODELS_REPAIR_WINDOW_HOURS = env_int("READMODELS_REPAIR_WINDOW_HOURS", 48)
# Upper bound of a read's ?wait= for ?min_position= (read-your-own-write).
READMODELS_MAX_WAIT_SECONDS = 30
# Members per conversation: each projector slice of a conversation loads every member's read mark and
# updates every inbox, so one huge conversation would stall its shard's chat projector. Adding members
# past it is a 409 (``too_many_members``); senders and readers past it are not made members.
CHAT_MAX_MEMBERS = env_int("CHAT_MAX_MEMBERS", 1_000)
# /readyz shares its verdict this long per API process (it opens a broker connection and queries every
# database); 0 checks on every call.
READYZ_CACHE_SECONDS = env_float("READYZ_CACHE_SECONDS", 2.0)
# --- Operations ----------------------------------------------------------------------------
# Functions "(shard) -> list[writes.operations.ProjectionStatus]" that report projection lag and the
# last repair run; the read side appends its own. The operations page and /metrics show what they return.
WRITES_PROJECTION_STATUS_SOURCES: list[str] = ["readmodels.operations.projection_status"]
# A copy batch of move_logical_shard, in rows.
WRITES_MOVE_CHUNK_ROWS = env_int("WRITES_MOVE_CHUNK_ROWS", 5_000)
# Stop chasing new writes after this long and fence anyway; the rest wait in the hold queue meanwhile.
WRITES_MOVE_MAX_CATCH_UP_SECONDS = env_float("WRITES_MOVE_MAX_CATCH_UP_SECONDS", 600.0)

# --- The log's lifecycle (writes/partitions.py, writes/lifecycle.py) ---------------------------
# Day partitions of write_log kept ready ahead of today.
WRITES_LOG_PARTITIONS_AHEAD_DAYS = env_int("WRITES_LOG_PARTITIONS_AHEAD_DAYS", 3)


def _retention_days(text: str) -> dict[str, int]:
    """``"event=30,message=365"`` → ``{"event": 30, "message": 365}``; a kind not named is kept forever."""
    days: dict[str, int] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        kind, _, value = part.partition("=")
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"WRITES_RETENTION_DAYS: expected kind=days (days >= 1), got {part!r}")
        days[kind.strip()] = int(value)
    return days


# How many days each kind stays in the log, e.g. "event=30,read=7"; default: every kind forever.
WRITES_RETENTION_DAYS = _retention_days(env("WRITES_RETENTION_DAYS", ""))
# Retired rows are written here first (Parquet, one directory per shard and day, with a manifest);
# WRITES_ARCHIVE=false retires without archives.
WRITES_ARCHIVE = env_bool("WRITES_ARCHIVE", True)
WRITES_ARCHIVE_DIR = Path(env("WRITES_ARCHIVE_DIR", str(BASE_DIR / "var" / "archive")))

# --- HTTP API ------------------------------------------------------------------------------
# Where the Django admin (and its operations page) answers, e.g. "back-office-7f3a/": off the path every
# scanner tries first. Slashes around it are optional.
ADMIN_PATH = env("ADMIN_PATH", "admin/").strip().strip("/") + "/"
if ADMIN_PATH == "/":
    raise ValueError("ADMIN_PATH must not be empty: the admin would shadow every other route.")
# The ASGI edge (api/edge): API processes, its database connections, and per-tenant bounds.
API_PROCESSES = env_int("API_PROCESSES", 2)
EDGE_DATABASE_POOL_SIZE = env_int("EDGE_DATABASE_POOL_SIZE", 4)
# Long-polls (?wait=, ?min_position=) one tenant may hold at once in one API process.
EDGE_MAX_WAITS_PER_TENANT = env_int("EDGE_MAX_WAITS_PER_TENANT", 1_000)
# Requests handed to Django (a thread each) at once per API process, and per tenant.
EDGE_DJANGO_CONCURRENCY = env_int("EDGE_DJANGO_CONCURRENCY", 32)
EDGE_DJANGO_PER_TENANT = env_int("EDGE_DJANGO_PER_TENANT", 8)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["api.auth.IsTenant"],
    "DEFAULT_THROTTLE_CLASSES": ["api.throttling.TenantRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Write absorber API",
    "DESCRIPTION": "Writes are validated, confirmed by RabbitMQ and answered 202; workers apply them to "
    "the tenant's PostgreSQL shard. Authenticate with `Authorization: Bearer <api key>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "OAS_VERSION": "3.1.0",
    # Swagger UI served from the sidecar package: the docs page works with no internet access.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "api.openapi.add_msgspec_components",
    ],
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
# gunicorn serves the admin's and the API docs' static files through WhiteNoise, straight from the
# installed apps: no collectstatic step, no separate web server.
WHITENOISE_USE_FINDERS = True

LOG_LEVEL = env("LOG_LEVEL", "INFO")
# "plain": readable lines with key=value context; "json": one JSON object per line (production default).
LOG_FORMAT = env("LOG_FORMAT", "plain")


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "tenant_context": {"()": "writes.logs.TenantContextFilter"},
            "redact_secrets": {"()": "writes.logs.RedactSecrets"},
        },
        "formatters": {
            "plain": {
                "()": "writes.logs.ReadableFormatter",
                "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            },
            "json": {"()": "writes.logs.JsonFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json" if log_format == "json" else "plain",
                "filters": ["tenant_context", "redact_secrets"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
    }


LOGGING: dict[str, Any] = logging_config(LOG_FORMAT, LOG_LEVEL)
