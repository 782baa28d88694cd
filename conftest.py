"""Fixtures shared by ``tests/`` and ``integration_tests/`` (helpers: ``tests.harness``)."""

import uuid

import pika
import pytest

from tests.harness import AMQP_URL, REDIS_URL, Broker


@pytest.fixture(scope='session')
def amqp_url():
    """The shared RabbitMQ; fails the run when it cannot be reached."""
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except Exception as exc:
        pytest.fail(
            f'RabbitMQ at {AMQP_URL} is not reachable ({exc!r}); run scripts/services.sh up'
        )
    return AMQP_URL


@pytest.fixture(scope='session')
def redis_url():
    """The shared Redis; fails the run when it cannot be reached."""
    import kombu

    try:
        with kombu.Connection(REDIS_URL) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        pytest.fail(f'Redis at {REDIS_URL} is not reachable ({exc!r}); run scripts/services.sh up')
    return REDIS_URL


@pytest.fixture
def names(amqp_url):
    """Unique exchange / queue names for one test; deleted from RabbitMQ afterwards (with the
    queues listed in ``names['extra_queues']``)."""
    suffix = uuid.uuid4().hex[:10]
    result = {
        'suffix': suffix,
        'exchange': f'cqrs_test_{suffix}',
        'queue': f'replica_{suffix}',
        'dead_letter_queue': f'dead_letter_replica_{suffix}',
    }
    yield result
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for queue in (result['queue'], result['dead_letter_queue'], *result.get('extra_queues', ())):
        channel.queue_delete(queue)
    channel.exchange_delete(result['exchange'])
    connection.close()


@pytest.fixture
def broker(request, amqp_url, names):
    """This test's exchange on the shared RabbitMQ (``tests.harness.Broker``), closed afterwards.

    A test module that sets ``REPLICA_QUEUE_BINDINGS`` (routing keys) gets the replica queue
    declared and bound to them.
    """
    result = Broker(amqp_url, names)
    bindings = getattr(request.module, 'REPLICA_QUEUE_BINDINGS', ())
    if bindings:
        result.bind_replica_queue(*bindings)
    yield result
    result.close()
