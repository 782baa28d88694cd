"""Issue 9, replica side, against real brokers: item 17 (a database error fails the message,
which the transport retries and dead-letters), the delay queue of ``dj_cqrs.delay`` and the
log lines of item 28, for RabbitMQTransport and KombuTransport (RabbitMQ and Redis).
"""

from __future__ import annotations

import json
import logging
import re

import kombu
import pytest

from tests.dj_master.models import SimplestModel
from tests.harness import (
    KOMBU,
    RABBIT,
    clean_redis,
    dead_letters,
    instance_data,
    wait_for,
    wire_body,
)

DB_ERROR = 'dj_replica_dberrorreplica'
UPDATED = '2024-01-01 00:00:00+00:00'


@pytest.fixture(params=['rabbit', 'kombu-amqp', 'kombu-redis'])
def setup(request, names):
    """(transport, broker URL) of each kind; Redis keys of this test are removed after."""
    if request.param == 'rabbit':
        return RABBIT, request.getfixturevalue('amqp_url')
    if request.param == 'kombu-amqp':
        return KOMBU, request.getfixturevalue('amqp_url')
    url = request.getfixturevalue('redis_url')
    request.addfinalizer(lambda: clean_redis(url, names))
    return KOMBU, url


def body(cqrs_id, pk, **fields):
    """The wire body (``tests.harness.wire_body``) of a SAVE of ``cqrs_id`` with ``fields``."""
    return wire_body(pk, cqrs_id=cqrs_id, instance_data=instance_data(pk, 0, UPDATED, **fields))


def publish_with_kombu(url, names, routing_key, message: dict):
    """Send one message body to the test exchange with Kombu, as a master would (any broker
    URL)."""
    exchange = kombu.Exchange(names['exchange'], type='topic', durable=True)
    with kombu.Connection(url) as connection:
        producer = kombu.Producer(connection.channel(), exchange=exchange)
        producer.publish(
            json.dumps(message),
            routing_key=routing_key,
            delivery_mode=2,
            content_type='text/plain',
            content_encoding='utf-8',
        )


def dead_letter_bodies(url, names):
    """Bodies in this test's dead-letter queue on the broker of ``url`` (``dead_letters``)."""
    return [body for body, _expiration in dead_letters(url, url, names['dead_letter_queue'])]


def start_replica(replica_service, transport, url, **env):
    replica = replica_service(transport, url, **env).start('-w', '1')
    replica.wait_ready()
    return replica


# --- item 17 ----------------------------------------------------------------------------------


def test_item_17_database_error_is_retried_through_the_delay_queue(setup, names, replica_service):
    transport, url = setup
    replica = start_replica(replica_service, transport, url)

    publish_with_kombu(url, names, 'db_error', body('db_error', 1, name='second try', fail_times=2))

    applied = 'CQRS is applied: pk = 1 (db_error), correlation_id = None.'
    wait_for(lambda: applied in replica.log(), message='applied after two database errors')
    assert replica.query(f'SELECT name FROM {DB_ERROR}') == [('second try',)]
    log = replica.log()
    for attempt in (1, 2):
        assert (
            f'forced database error, attempt {attempt}\n'
            'CQRS SAVE error: pk = 1, cqrs_revision = 0 (db_error).'
        ) in log
    assert 'CQRS is received: pk = 1 (db_error), correlation_id = None.' in log
    assert 'CQRS is failed: pk = 1 (db_error), correlation_id = None, retries = 0.' in log
    assert 'CQRS is failed: pk = 1 (db_error), correlation_id = None, retries = 1.' in log
    assert 'CQRS is delayed: pk = 1 (db_error), correlation_id = None, delay = 1 sec, eta = ' in (
        log
    )
    assert log.count('CQRS is requeued: pk = 1 (db_error), correlation_id = None.') == 2
    assert 'CQRS service exception' not in log
    assert dead_letter_bodies(url, names) == []


def test_item_17_database_error_every_time_ends_in_the_dead_letter_queue(
    setup, names, replica_service
):
    transport, url = setup
    replica = start_replica(replica_service, transport, url)

    publish_with_kombu(url, names, 'db_error', body('db_error', 1, name='never', fail_times=99))

    line = 'CQRS is added to dead letter queue: pk = 1 (db_error), correlation_id = None.'
    wait_for(lambda: line in replica.log(), message='dead-lettered after CQRS_MAX_RETRIES')
    assert replica.count(DB_ERROR) == 0
    log = replica.log()
    assert log.count('CQRS SAVE error: pk = 1, cqrs_revision = 0 (db_error).') == 4
    assert log.count('CQRS is requeued: pk = 1 (db_error)') == 3
    [dead] = wait_for(lambda: dead_letter_bodies(url, names), message='the dead letter')
    assert (dead['cqrs_id'], dead['retries']) == ('db_error', 3)


def test_item_13_no_db_operations_without_hooks_is_a_service_exception(
    setup, names, replica_service
):
    """NotImplementedError (not a database error) fails the message like any hook exception."""
    transport, url = setup
    replica = start_replica(replica_service, transport, url)

    publish_with_kombu(url, names, 'no_db_without_hooks', body('no_db_without_hooks', 5, name='x'))

    line = 'CQRS is added to dead letter queue: pk = 5 (no_db_without_hooks)'
    wait_for(lambda: line in replica.log(), message='dead-lettered after CQRS_MAX_RETRIES')
    log = replica.log()
    assert log.count('CQRS service exception') == 4
    assert 'NotImplementedError' in log
    assert replica.count('dj_replica_nodbwithouthooksreplica') == 0


# --- item 28: log lines -----------------------------------------------------------------------


def test_item_28_unusable_bodies_are_logged_as_the_original(setup, names, replica_service):
    transport, url = setup
    replica = start_replica(replica_service, transport, url)
    exchange = kombu.Exchange(names['exchange'], type='topic', durable=True)
    with kombu.Connection(url) as connection:
        producer = kombu.Producer(connection.channel(), exchange=exchange)
        producer.publish(b'{not json', routing_key='simplest', content_type='text/plain')
    missing = body('simplest', 3, name='x')
    del missing['instance_pk']
    publish_with_kombu(url, names, 'simplest', missing)

    wait_for(lambda: "isn't found in body" in replica.log(), message='the missing-key line')
    log = replica.log()
    assert "CQRS couldn't be parsed: b'{not json'." in log
    assert "CQRS couldn't proceed, instance_pk isn't found in body: " in log
    assert replica.process.poll() is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize('transport', [RABBIT, KOMBU])
def test_item_28_published_line(master, transport, caplog):
    caplog.set_level(logging.INFO, logger='django-cqrs')
    master(transport)

    SimplestModel.objects.create(id=11, name='published')

    messages = [r.getMessage() for r in caplog.records if r.name == 'django-cqrs']
    assert 'CQRS is published: pk = 11 (simplest), correlation_id = None.' in messages


# --- item 29: the delay queue of a worker -----------------------------------------------------


def test_item_29_full_delay_queue_requeues_the_message_due_first(names, replica_service, amqp_url):
    """delay_queue_max_size = 1 and a long retry delay: the second failure pushes the first
    message out of the worker's DelayQueue, back to the broker at once."""
    replica = start_replica(
        replica_service,
        RABBIT,
        amqp_url,
        CQRS_TEST_DELAY_QUEUE='1',
        CQRS_TEST_RETRY_DELAY='30',
    )

    publish_with_kombu(amqp_url, names, 'db_error', body('db_error', 1, name='a', fail_times=99))
    wait_for(lambda: 'CQRS is delayed: pk = 1 (db_error)' in replica.log(), message='1 delayed')
    publish_with_kombu(amqp_url, names, 'db_error', body('db_error', 2, name='b', fail_times=99))

    wait_for(
        lambda: 'CQRS is requeued: pk = 1 (db_error), correlation_id = None.' in replica.log(),
        message='message 1 evicted from the full delay queue and requeued',
    )
    events = re.findall(r'CQRS is (delayed|requeued): pk = (\d) \(db_error\)', replica.log())
    assert events[:3] == [('delayed', '1'), ('requeued', '1'), ('delayed', '2')]
