"""Fixtures for tests against real brokers: unique names, replica service processes.

The brokers come from ``scripts/services.sh up`` (``make test`` runs it). A broker that cannot
be reached fails the test run; nothing here is skipped. The helpers are in ``tests.harness``;
``amqp_url``, ``redis_url``, ``names`` and ``broker`` are fixtures of the root ``conftest.py``
(shared with ``integration_tests``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.test import override_settings

from tests.harness import (
    RABBIT,
    ReplicaService,
    clean_redis,
    cqrs_settings_for,
    reset_publisher,
    settle_publisher,
)

HERE = Path(__file__).resolve().parent


def _side_run_item(item: pytest.Item) -> bool:
    """A broker test of the side run: a PostgreSQL replica (``vendor`` parameter) or the
    3-node cluster."""
    callspec = getattr(item, 'callspec', None)
    vendor = callspec.params.get('vendor') if callspec is not None else None
    return vendor == 'postgresql' or item.path.name == 'test_cluster.py'


def pytest_collection_modifyitems(config, items):
    """``CQRS_TEST_SIDE_RUN=1`` keeps only the broker tests of the side run (PostgreSQL
    replicas, the cluster), ``=0`` all the others; unset, everything runs.

    ``scripts/run_tests.sh`` runs the side run beside the main one, which is the longest.
    """
    side = os.environ.get('CQRS_TEST_SIDE_RUN')
    if side not in ('0', '1'):
        return
    kept, deselected = [], []
    for item in items:
        in_side_run = HERE in item.path.parents and _side_run_item(item)
        (kept if in_side_run == (side == '1') else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(autouse=True)
def _fresh_publisher():
    """Every test starts and ends with a fresh publisher (``reset_publisher``): nothing this
    process published for one test (an unconfirmed message, a broker found unreachable) reaches
    the next one, whether or not it used ``master``."""
    reset_publisher()
    yield
    reset_publisher()


@pytest.fixture
def master(names, amqp_url):
    """This test process as a master service publishing to RabbitMQ under unique names.

    The publisher starts and ends fresh: at the end the broker's confirms of what the test
    published are awaited (``settle_publisher``), then ``reset_publisher``; no state leaks
    between tests.
    """

    def configure(transport=RABBIT, url=None, ssl_options=None, **replica):
        settings = cqrs_settings_for(transport, url or amqp_url, names, ssl_options, **replica)
        override = override_settings(CQRS=settings)
        override.enable()
        overrides.append(override)
        return settings

    overrides = []
    reset_publisher()
    yield configure
    settle_publisher(timeout=30)
    reset_publisher()
    for override in reversed(overrides):
        override.disable()


@pytest.fixture
def replica_service(tmp_path, names, amqp_url):
    """Factory of replica services sharing this test's exchange; all stopped at the end.

    ``vendor='postgresql'`` gives the service a PostgreSQL database of its own (dropped at the
    end) instead of an SQLite file.
    """
    services: list[ReplicaService] = []

    def make(transport=RABBIT, url=None, queue=None, vendor='sqlite', **env: str) -> ReplicaService:
        service_env = {
            'CQRS_TEST_TRANSPORT': transport,
            'CQRS_TEST_URL': url or amqp_url,
            'CQRS_TEST_EXCHANGE': names['exchange'],
            'CQRS_TEST_QUEUE': queue or names['queue'],
            'CQRS_TEST_LOG_LEVEL': 'INFO',
            **{key: str(value) for key, value in env.items()},
        }
        if queue and queue != names['queue']:
            names.setdefault('extra_queues', []).extend([queue, f'dead_letter_{queue}'])
        service = ReplicaService(tmp_path, service_env, vendor)
        services.append(service)
        return service

    yield make
    for service in services:
        service.close()


@pytest.fixture(scope='module')
def private_broker(tmp_path_factory):
    """A RabbitMQ node of this test module's own, which tests may stop and restart."""
    from tests.transport.private_broker import PrivateBroker

    broker = PrivateBroker(tmp_path_factory.mktemp('rabbitmq')).start()
    yield broker
    broker.stop()


@pytest.fixture(scope='module')
def tls_broker(tmp_path_factory):
    """A private RabbitMQ node with an AMQPS listener and a throw-away CA (``certificates``)."""
    from tests.transport.private_broker import PrivateBroker

    broker = PrivateBroker(tmp_path_factory.mktemp('rabbitmq-tls'), tls=True).start()
    yield broker
    broker.stop()


@pytest.fixture(params=['amqp', 'redis'])
def kombu_url(request, names):
    """A Kombu broker URL of each kind; Redis keys of this test's queues are removed after."""
    if request.param == 'amqp':
        yield request.getfixturevalue('amqp_url')
        return
    url = request.getfixturevalue('redis_url')
    yield url
    clean_redis(url, names)


@pytest.fixture(scope='session')
def rabbit_cluster(tmp_path_factory):
    """A local 3-node RabbitMQ cluster (``tests.transport.cluster``), built once per run.

    Started on first use, killed and removed at the end of the session whatever happened.
    Skipped only when a ``rabbitmq-server`` node cannot be started at all.
    """
    import atexit

    from tests.transport.cluster import RabbitCluster
    from tests.transport.private_broker import SERVER

    if not SERVER.exists():
        pytest.skip(f'cluster tests need rabbitmq-server ({SERVER} is missing)')
    cluster = RabbitCluster(tmp_path_factory.mktemp('rabbitmq-cluster'))
    atexit.register(cluster.teardown)
    try:
        cluster.start()
    except RuntimeError as error:
        if 'did not start' not in str(error):
            raise
        pytest.skip(f'cluster tests need rabbitmq-server nodes, which cannot start: {error}')
    yield cluster
    cluster.teardown()
