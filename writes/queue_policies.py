"""The broker side of the queue settings: the shard queues' policy, and declaring every write-path queue.

A queue argument cannot change once the queue exists (RabbitMQ answers 406 to a redeclaration with
other arguments), so the tunable bounds live in a policy that ``prepare_queues`` (re)applies; the live
queues follow it at once. Policies are written through the management HTTP API
(``RABBITMQ_MANAGEMENT_URL``; by default port 15672 on the broker's host, with the broker's user) or,
when nothing answers there and the broker runs on this machine, with ``rabbitmqctl``.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import amqp
from django.conf import settings
from kombu import Connection, Queue

from writes.errors import WritesError
from writes.queues import (
    all_queues,
    dead_letter_queue,
    shard_queue_policy,
    shard_queue_policy_name,
    shard_queue_policy_pattern,
)

# Above a catch-all policy an operator may have (only one policy applies to a queue: the highest).
POLICY_PRIORITY = 10
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
ENABLE_HINT = "rabbitmq-plugins enable rabbitmq_management"


class QueueSetupError(WritesError):
    """The broker's policies or queues could not be set up as the settings say."""


@dataclass(frozen=True)
class _Broker:
    host: str
    port: int
    user: str
    password: str
    vhost: str


def _broker() -> _Broker:
    connection = Connection(settings.CELERY_BROKER_URL)
    return _Broker(
        host=connection.hostname or "127.0.0.1",
        port=int(connection.port or 5672),
        user=connection.userid or "guest",
        password=connection.password or "guest",
        vhost=connection.virtual_host or "/",
    )


# --- where policies are written --------------------------------------------------------------


class _ManagementApi:
    def __init__(self, url: str, broker: _Broker) -> None:
        parts = urllib.parse.urlsplit(url)
        netloc = (parts.hostname or broker.host) + (f":{parts.port}" if parts.port else "")
        self.base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        user = urllib.parse.unquote(parts.username) if parts.username else broker.user
        password = urllib.parse.unquote(parts.password) if parts.password else broker.password
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.vhost = urllib.parse.quote(broker.vhost, safe="")
        self.where = f"the management API at {self.base}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(  # noqa: S310 - the operator's configured http(s) URL
            f"{self.base}/api/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            payload = response.read()
        return json.loads(payload) if payload else None

    def set_policy(self, name: str, pattern: str, definition: dict[str, Any]) -> None:
        body = {"pattern": pattern, "definition": definition, "priority": POLICY_PRIORITY, "apply-to": "queues"}
        self._call("PUT", f"policies/{self.vhost}/{urllib.parse.quote(name, safe='')}", body)

    def clear_policy(self, name: str) -> None:
        try:
            self._call("DELETE", f"policies/{self.vhost}/{urllib.parse.quote(name, safe='')}")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise

    def queue_policy(self, queue: str) -> str | None:
        found = self._call("GET", f"queues/{self.vhost}/{urllib.parse.quote(queue, safe='')}")
        return (found or {}).get("policy") or None


class _Rabbitmqctl:
    def __init__(self, node: str, broker: _Broker) -> None:
        self.command = ["rabbitmqctl", *(["-n", node] if node else [])]
        self.vhost = broker.vhost
        self.where = "rabbitmqctl" + (f" -n {node}" if node else "")

    def _run(self, *arguments: str) -> str:
        done = subprocess.run(  # noqa: S603 - fixed program, arguments from settings
            [*self.command, "-q", *arguments], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise QueueSetupError(f"{self.where} {arguments[0]} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def set_policy(self, name: str, pattern: str, definition: dict[str, Any]) -> None:
        self._run(
            "set_policy", "-p", self.vhost, "--apply-to", "queues", "--priority", str(POLICY_PRIORITY),
            name, pattern, json.dumps(definition),
        )  # fmt: skip

    def clear_policy(self, name: str) -> None:
        policies = json.loads(self._run("list_policies", "-p", self.vhost, "--formatter", "json") or "[]")
        if any(policy.get("name") == name for policy in policies):
            self._run("clear_policy", "-p", self.vhost, name)

    def queue_policy(self, queue: str) -> str | None:
        queues = json.loads(self._run("list_queues", "-p", self.vhost, "--formatter", "json", "name", "policy") or "[]")
        return next((q.get("policy") or None for q in queues if q.get("name") == queue), None)


_PolicyStore = _ManagementApi | _Rabbitmqctl


def _policy_store() -> _PolicyStore:
    broker = _broker()
    if settings.RABBITMQCTL_NODE:
        return _Rabbitmqctl(settings.RABBITMQCTL_NODE, broker)
    url = settings.RABBITMQ_MANAGEMENT_URL or f"http://{broker.host}:15672/"
    api = _ManagementApi(url, broker)
    try:
        api._call("GET", "overview")
        return api
    except urllib.error.HTTPError as exc:
        raise QueueSetupError(
            f"{api.where} answered {exc.code} ({exc.reason}): the user needs the policymaker tag."
        ) from exc
    except OSError as exc:
        # Nothing listens there. A broker on this machine can still be reached with rabbitmqctl, unless
        # the URL was given on purpose (then it must answer).
        if not settings.RABBITMQ_MANAGEMENT_URL and broker.host in LOCAL_HOSTS and shutil.which("rabbitmqctl"):
            return _Rabbitmqctl("", broker)
        raise QueueSetupError(
            f"{api.where} does not answer ({exc}). Enable it on the broker ({ENABLE_HINT}) or set "
            "RABBITMQ_MANAGEMENT_URL (http://user:password@host:15672/)."
        ) from exc


def apply_queue_policies() -> str:
    """Set the shard queues' policy from the settings (idempotent); returns where it was written."""
    store = _policy_store()
    try:
        store.set_policy(shard_queue_policy_name(), shard_queue_policy_pattern(), shard_queue_policy())
    except OSError as exc:  # urllib's HTTPError and URLError too
        raise QueueSetupError(f"{store.where} refused the policy: {exc}") from exc
    return store.where


def clear_queue_policies() -> None:
    """Remove this prefix's policy (tests with queues of their own clean up with it)."""
    _policy_store().clear_policy(shard_queue_policy_name())


def queue_policy(queue: str) -> str | None:
    """The name of the policy the broker applies to ``queue`` (None: none, or no such queue)."""
    return _policy_store().queue_policy(queue)


# --- declaring the queues, and replacing those declared with the old arguments ---------------------

# Time for publishes routed just before an unbind to land in the queue before it is counted.
UNBIND_SETTLE_SECONDS = 1.0


def prepare_queues(*, report: Any = None) -> None:
    """Apply the policy, then declare every write-path queue; a shard queue declared by an older version
    (its bounds as arguments) is recreated with the current arguments, if and only if nothing is in it.

    Never drops a message: the old queue is first unbound (a publish meanwhile is returned and the API
    answers 503), then deleted only if it holds no message and has no consumer; otherwise it is bound
    again and the error says what to do.
    """
    say = report or (lambda _line: None)
    say(f"policy {shard_queue_policy_name()} {shard_queue_policy()} set through {apply_queue_policies()}")
    with Connection(settings.CELERY_BROKER_URL) as connection:
        for queue in [*all_queues(), dead_letter_queue()]:
            if _declare(connection, queue):
                continue
            _recreate(connection, queue)
            say(f"recreated {queue.name}: it had been declared with other arguments (now carried by the policy)")


def _declare(connection: Connection, queue: Queue) -> bool:
    """Declare ``queue`` (exchange and binding too); False when it exists with other arguments."""
    channel: Any = connection.channel()
    try:
        queue.bind(channel).declare()
        return True
    except amqp.exceptions.PreconditionFailed:
        return False  # the broker closed that channel
    finally:
        if channel.is_open:
            channel.close()


def _recreate(connection: Connection, queue: Queue) -> None:
    channel: Any = connection.channel()
    try:
        exchange, key = queue.exchange.name, queue.routing_key
        channel.queue_unbind(queue.name, exchange, key)
        time.sleep(UNBIND_SETTLE_SECONDS)
        _, messages, consumers = channel.queue_declare(queue.name, passive=True)
        if messages or consumers:
            channel.queue_bind(queue.name, exchange, key)
            raise QueueSetupError(
                f"{queue.name} was declared with other arguments (an older version's) and holds {messages} "
                f"message(s) with {consumers} consumer(s): it can only be replaced empty. Stop the API, let its "
                "workers drain it, stop them, then run `manage.py prepare_queues` again (README, Upgrading)."
            )
        channel.queue_delete(queue.name)
        queue.bind(channel).declare()
    finally:
        if channel.is_open:
            channel.close()
