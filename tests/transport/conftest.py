"""Fixtures for tests against real brokers: unique names, replica service processes.

The brokers come from ``scripts/services.sh up`` (``make test`` runs it). A broker that cannot
be reached fails the test run; nothing here is skipped.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pika
import pytest
from django.test import override_settings

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get('CQRS_TEST_AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672/%2F')
REDIS_URL = os.environ.get('CQRS_TEST_REDIS_URL', 'redis://127.0.0.1:6379/0')
RABBIT = 'dj_cqrs.transport.RabbitMQTransport'
KOMBU = 'dj_cqrs.transport.KombuTransport'


def wait_for(predicate, timeout=30.0, interval=0.05, message='condition'):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f'timed out after {timeout} s waiting for {message}')
        time.sleep(interval)


@pytest.fixture(scope='session')
def amqp_url():
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except Exception as exc:
        pytest.fail(
            f'RabbitMQ at {AMQP_URL} is not reachable ({exc!r}); run scripts/services.sh up'
        )
    return AMQP_URL


@pytest.fixture(scope='session')
def redis_url():
    import kombu

    try:
        with kombu.Connection(REDIS_URL) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        pytest.fail(f'Redis at {REDIS_URL} is not reachable ({exc!r}); run scripts/services.sh up')
    return REDIS_URL


@pytest.fixture
def names(amqp_url):
    """Unique exchange / queue names for one test; deleted from RabbitMQ afterwards."""
    suffix = uuid.uuid4().hex[:10]
    result = {
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


def cqrs_settings_for(transport, url, names, **replica):
    return {
        'transport': transport,
        'url': url,
        'exchange': names['exchange'],
        'queue': names['queue'],
        'master': {'CQRS_MESSAGE_TTL': 3600},
        'replica': {'CQRS_MAX_RETRIES': 3, 'CQRS_RETRY_DELAY': 1, **replica},
    }


@pytest.fixture
def master(names, amqp_url):
    """This test process as a master service publishing to RabbitMQ under unique names."""
    from dj_cqrs.transport import KombuTransport, RabbitMQTransport

    def configure(transport=RABBIT, url=None, **replica):
        settings = cqrs_settings_for(transport, url or amqp_url, names, **replica)
        override = override_settings(CQRS=settings)
        override.enable()
        overrides.append(override)
        return settings

    overrides = []
    yield configure
    RabbitMQTransport.clean_connection()
    KombuTransport.clean_connection()
    for override in reversed(overrides):
        override.disable()


class ReplicaService:
    """A replica service: its own SQLite database and a ``cqrs_consume`` process."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.db_path = tmp_path / f'replica-{uuid.uuid4().hex[:6]}.sqlite3'
        self.log_path = self.db_path.with_suffix('.log')
        self.env = {**os.environ, **env, 'CQRS_TEST_DB': str(self.db_path)}
        self.env['DJANGO_SETTINGS_MODULE'] = 'tests.settings_broker'
        self.env['PYTHONPATH'] = str(ROOT)
        self.process: subprocess.Popen | None = None
        self.manage('migrate', '--run-syncdb', '-v', '0')

    def manage(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a management command of this service and return the finished process."""
        return subprocess.run(
            [sys.executable, '-m', 'django', *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=check,
            timeout=kwargs.pop('timeout', 120),
            **kwargs,
        )

    def start(self, *args: str) -> ReplicaService:
        """Start ``cqrs_consume`` with ``args``."""
        log = self.log_path.open('a')
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'django', 'cqrs_consume', *args],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, workers: int = 1, timeout: float = 30) -> None:
        wait_for(
            lambda: self.log().count('CQRS consumer is ready') >= workers,
            timeout,
            message=f'{workers} ready workers (log: {self.log()[-2000:]})',
        )

    def stop(self, timeout: float = 20) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ''

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        connection = sqlite3.connect(self.db_path, timeout=30)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def count(self, table: str = 'dj_replica_simplestreplica') -> int:
        return self.query(f'SELECT COUNT(*) FROM {table}')[0][0]


@pytest.fixture
def replica_service(tmp_path, names, amqp_url):
    """Factory of replica services sharing this test's exchange; all stopped at the end."""
    services: list[ReplicaService] = []

    def make(transport=RABBIT, url=None, queue=None, **env: str) -> ReplicaService:
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
        service = ReplicaService(tmp_path, service_env)
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop()


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
