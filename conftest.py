"""Fixtures shared by ``tests/`` and ``integration_tests/`` (helpers: ``tests.harness``)."""

import pika
import pytest

from tests.harness import AMQP_URL, REDIS_URL


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
