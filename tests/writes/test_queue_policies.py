"""The shard queues' tunables live in a RabbitMQ policy: a changed setting changes the live queue, queues an
older version declared with the bounds as arguments are replaced without losing a message, and
dead-lettering is at-least-once."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from typing import Any

import amqp
import pytest
from django.conf import settings
from django.test import override_settings
from kombu import Connection, Queue

from tests.conftest import ALL_DATABASES, make_tenant
from tests.stack import queue_depth, queues_of_their_own
from writes.publisher import publish_apply_message
from writes.queue_policies import (
    QueueSetupError,
    prepare_queues,
    queue_policy,
)
from writes.queues import (
    dead_letter_queue_name,
    queue_name,
    shard_queue,
    shard_queue_arguments,
    shard_queue_policy_name,
)

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

# What the shard queues were declared with before the bounds moved into a policy.
OLD_ARGUMENTS = {
    "x-queue-type": "quorum",
    "x-max-length": 100_000,
    "x-max-length-bytes": 2 * 1024**3,
    "x-overflow": "reject-publish",
    "x-delivery-limit": 20,
    "x-dead-letter-exchange": "",
}


def post_until_refused(tenant: Any, limit: int) -> list[int]:
    statuses = []
    for _ in range(limit):
        response = tenant.post_json("/api/v1/events", {"name": "fill"})
        statuses.append(response.status_code)
        if response.status_code != 202:
            assert response.json()["error"]["code"] == "queue_full"
            break
    return statuses


def test_raising_the_queue_bound_applies_to_the_live_queue():
    tenant = make_tenant("bounded")
    with queues_of_their_own("policy", WRITES_QUEUE_MAX_LENGTH=3):
        prepare_queues()
        first = post_until_refused(tenant, 20)
        # Quorum queues enforce the bound approximately: one more may get in.
        assert 3 <= first.count(202) <= 4, first
        assert first[-1] == 503, first
        with override_settings(WRITES_QUEUE_MAX_LENGTH=10):
            prepare_queues()  # what an operator runs after changing the setting: the queue is not replaced
            second = post_until_refused(tenant, 30)
        depth = queue_depth(shard_queue(tenant.shard))
    accepted = first.count(202) + second.count(202)
    assert second[0] == 202, "the raised bound took effect on the live queue"
    assert 10 <= accepted <= 11, (first, second)
    assert second[-1] == 503, second
    assert depth == accepted  # the same queue: what was accepted before the change is still there


def test_the_broker_reports_the_policy_on_every_shard_queue():
    with queues_of_their_own("policy"):
        prepare_queues()
        assert {queue_policy(queue_name(alias)) for alias in settings.SHARD_ALIASES} == {shard_queue_policy_name()}
        assert queue_policy(dead_letter_queue_name()) is None  # the dead letters are never refused


def _groups(name: str) -> list[Any]:
    now = "2026-05-01T00:00:00+00:00"
    return [[str(uuid.uuid4()), "event", now, [[str(uuid.uuid4()), name, "{}", now]]]]


def _declare_old(alias: str, *, messages: int = 0) -> None:
    old = Queue(
        queue_name(alias),
        exchange=shard_queue(alias).exchange,
        routing_key=queue_name(alias),
        durable=True,
        queue_arguments={**OLD_ARGUMENTS, "x-dead-letter-routing-key": dead_letter_queue_name()},
    )
    with Connection(settings.CELERY_BROKER_URL) as connection:
        old.bind(connection.channel()).declare()
        for number in range(messages):
            publish_apply_message(old, alias, _groups(f"old-{number}"))


def _arguments_are_current(alias: str) -> bool:
    with Connection(settings.CELERY_BROKER_URL) as connection:
        channel: Any = connection.channel()
        try:
            channel.queue_declare(queue_name(alias), durable=True, auto_delete=False, arguments=shard_queue_arguments())
            return True
        except amqp.exceptions.PreconditionFailed:
            return False


def test_prepare_queues_replaces_an_empty_queue_declared_with_the_old_arguments():
    with queues_of_their_own("policy"):
        _declare_old("shard_0")
        assert not _arguments_are_current("shard_0")  # the 406 every process would get
        lines: list[str] = []
        prepare_queues(report=lines.append)
        assert any(line.startswith(f"recreated {queue_name('shard_0')}") for line in lines), lines
        assert _arguments_are_current("shard_0")
        assert queue_policy(queue_name("shard_0")) == shard_queue_policy_name()


def test_prepare_queues_keeps_a_queue_with_messages_and_says_what_to_do():
    with queues_of_their_own("policy"):
        _declare_old("shard_1", messages=2)
        with pytest.raises(QueueSetupError, match="holds 2 message"):
            prepare_queues()
        assert not _arguments_are_current("shard_1")
        old = Queue(queue_name("shard_1"), exchange=shard_queue("shard_1").exchange, routing_key=queue_name("shard_1"))
        with Connection(settings.CELERY_BROKER_URL) as connection:
            channel: Any = connection.channel()
            assert channel.queue_declare(queue_name("shard_1"), passive=True).message_count == 2
            # Bound again: a publish through the exchange still reaches it (mandatory, so unroutable would raise).
            channel.basic_publish(
                amqp.Message(b"{}"), exchange=old.exchange.name, routing_key=old.routing_key, mandatory=True
            )
            time.sleep(0.5)
            assert channel.queue_declare(queue_name("shard_1"), passive=True).message_count == 3


def _messages_held_for_dead_lettering(queue: str) -> int:
    """Messages a quorum queue keeps until its dead-letter target confirms them (RabbitMQ 3.10's CLI does
    not list this figure, so it is asked of the node itself)."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl on the broker's machine")
    vhost = Connection(settings.CELERY_BROKER_URL).virtual_host or "/"
    expression = (
        f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"{vhost}">>, queue, <<"{queue}">>)), '
        '[{_, N}] = rabbit_quorum_queue:info(Q, [messages_dlx]), io:format("~b~n", [N]).'
    )
    done = subprocess.run(["rabbitmqctl", "-q", "eval", expression], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"rabbitmqctl eval not permitted here: {done.stderr.strip()}")
    return int(json.loads(done.stdout.split()[0]))


def test_a_poisoned_message_is_dead_lettered_at_least_once():
    with queues_of_their_own("policy"):
        prepare_queues()
        shard = queue_name("shard_0")
        with Connection(settings.CELERY_BROKER_URL) as connection:
            channel: Any = connection.channel()
            # A poisoned message: the worker rejects it for good, and the queue dead-letters it.
            publish_apply_message(shard_queue("shard_0"), "shard_0", _groups("poison"))
            poisoned = channel.basic_get(shard, no_ack=False)
            channel.basic_reject(poisoned.delivery_tag, requeue=False)
            deadline = time.monotonic() + 10
            while channel.queue_declare(dead_letter_queue_name(), passive=True).message_count == 0:
                assert time.monotonic() < deadline, "the poisoned message did not reach the dead-letter queue"
                time.sleep(0.1)
            letter = channel.basic_get(dead_letter_queue_name(), no_ack=True)
            assert letter.body == poisoned.body
            assert letter.headers["x-death"][0]["reason"] == "rejected"

            # With its dead-letter queue gone (deleted by mistake, being recreated), a poisoned message is
            # kept by the shard queue until the dead-letter queue takes it, not dropped (at-most-once would).
            channel.queue_delete(dead_letter_queue_name())
            publish_apply_message(shard_queue("shard_0"), "shard_0", _groups("again"))
            poisoned = channel.basic_get(shard, no_ack=False)
            channel.basic_reject(poisoned.delivery_tag, requeue=False)
            time.sleep(1)
            assert channel.queue_declare(shard, passive=True).message_count == 0
            assert _messages_held_for_dead_lettering(shard) == 1
