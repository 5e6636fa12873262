"""Broker connections over several nodes: every node is tried before giving up, credentials never shown,
and quorum queues declared with the configured number of replicas."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings
from kombu import Connection
from kombu.exceptions import OperationalError

from writes.broker import broker_connection, broker_urls, redacted, rotated_broker_url
from writes.queues import all_queues, dead_letter_queue, hold_queue, quorum_arguments
from writes.readiness import broker_reachable

DEAD = ["amqp://guest:guest@127.0.0.1:1//", "amqp://guest:guest@127.0.0.1:2//"]


def test_broker_urls_split_a_semicolon_list_in_order():
    assert broker_urls(" amqp://a//; amqp://b// ;") == ["amqp://a//", "amqp://b//"]


def test_broker_connection_reaches_the_third_node_when_the_first_two_are_down():
    nodes = ";".join([*DEAD, settings.CELERY_BROKER_URL])
    with broker_connection(nodes, connect_timeout=1) as connection:
        assert connection.connected
        assert connection.as_uri().endswith(settings.CELERY_BROKER_URL.split("@", 1)[1])
    # kombu's own connect() tries two URLs only: this is why the write path opens its connections above.
    with pytest.raises(OSError, match="refused"), Connection(nodes, connect_timeout=1) as plain:
        plain.connect()


def test_broker_connection_raises_when_no_node_answers():
    with pytest.raises((OSError, OperationalError)):
        broker_connection(";".join(DEAD), connect_timeout=1)
    with override_settings(CELERY_BROKER_URL=";".join(DEAD)):
        assert not broker_reachable(timeout=1)
    with override_settings(CELERY_BROKER_URL=";".join([*DEAD, settings.CELERY_BROKER_URL])):
        assert broker_reachable(timeout=1)


def test_redacted_hides_the_credentials_of_every_node():
    shown = redacted("amqp://u:secret1@a:5672//;amqp://u:secret2@b:5672//")
    assert "secret" not in shown
    assert shown == "amqp://***@a:5672//;amqp://***@b:5672//"


def test_quorum_queues_carry_the_replica_count_when_it_is_set():
    assert "x-quorum-initial-group-size" not in quorum_arguments()  # the broker's default: every node
    with override_settings(WRITES_QUEUE_REPLICAS=3):
        for queue in [*all_queues(), dead_letter_queue(), hold_queue(7)]:
            arguments = queue.queue_arguments or {}
            assert arguments["x-queue-type"] == "quorum"
            assert arguments["x-quorum-initial-group-size"] == 3


def test_rotated_broker_url_starts_each_turn_at_the_next_node():
    nodes = "amqp://a//;amqp://b//;amqp://c//"
    assert rotated_broker_url(0, nodes) == nodes
    assert rotated_broker_url(1, nodes) == "amqp://b//;amqp://c//;amqp://a//"
    assert rotated_broker_url(5, nodes) == "amqp://c//;amqp://a//;amqp://b//"
