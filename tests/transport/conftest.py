"""Fixtures for tests against real brokers: unique names, replica service processes.

The brokers come from ``scripts/services.sh up`` (``make test`` runs it). A broker that cannot
be reached fails the test run; nothing here is skipped.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pika
import pytest
from django.test import override_settings

from tests._evidence import touched

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get('CQRS_TEST_AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672/%2F')
REDIS_URL = os.environ.get('CQRS_TEST_REDIS_URL', 'redis://127.0.0.1:6379/0')
PG_SERVER = {
    'host': os.environ.get('CQRS_TEST_PG_HOST', '127.0.0.1'),
    'port': os.environ.get('CQRS_TEST_PG_PORT', '5432'),
    'user': os.environ.get('CQRS_TEST_PG_USER', 'cqrs'),
    'password': os.environ.get('CQRS_TEST_PG_PASSWORD', 'cqrs'),
}
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


def wait_equal(expected, actual, timeout=60.0, message='the two sides to be equal'):
    """Wait until ``actual()`` equals ``expected()``; fail showing both (and what differs)."""
    state = {}

    def equal():
        state['expected'], state['actual'] = expected(), actual()
        return state['expected'] == state['actual']

    deadline = time.monotonic() + timeout
    while not equal():
        if time.monotonic() > deadline:
            want, got = state['expected'], state['actual']
            if isinstance(want, list | set) and isinstance(got, list | set):
                detail = (
                    f'missing {sorted(set(want) - set(got))[:10]}, '
                    f'unexpected {sorted(set(got) - set(want))[:10]}'
                )
            else:
                detail = f'expected {want!r}, got {got!r}'
            pytest.fail(f'timed out after {timeout} s waiting for {message}: {detail}')
        time.sleep(0.1)
    return state['actual']


def reset_publisher() -> None:
    """Close this process's publishing connections and forget a broker unreachable a moment ago.

    ``RabbitMQTransport`` fails publishes at once for a moment after a failed connection attempt
    (whatever the URL of the next test), and ``clean_connection()`` keeps that pause; the
    fixtures that make this process a publisher call this before and after each test.
    """
    from dj_cqrs.transport import KombuTransport, RabbitMQTransport

    RabbitMQTransport.clean_connection()
    KombuTransport.clean_connection()
    publisher = RabbitMQTransport._publisher
    publisher._unreachable = None
    publisher._unreachable_until = 0.0


def queue_depth(channel, queue: str) -> int:
    """Ready messages in ``queue`` (which must exist), as the broker counts them."""
    return channel.queue_declare(queue, passive=True).method.message_count


MARKER_ROUTING_KEY = 'cqrs_test.marker'


def bodies_before_marker(channel, exchange: str, queue: str, timeout: float = 30) -> list[bytes]:
    """Publish a marker to ``exchange`` and return the bodies that ``queue`` holds before it.

    ``queue`` is bound to ``exchange`` with ``#``. Whatever was routed to it before the marker
    (e.g. by a process that has exited, so whose messages are confirmed) comes first: an empty
    list proves on the broker that nothing was published, without sleeping.
    """
    marker = f'marker-{uuid.uuid4().hex}'.encode()
    channel.basic_publish(exchange, MARKER_ROUTING_KEY, marker)
    bodies: list[bytes] = []

    def marker_seen():
        while True:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return False
            if body == marker:
                return True
            bodies.append(body)

    wait_for(marker_seen, timeout, message=f'the marker in {queue} (before it: {bodies[:5]})')
    return bodies


def received_pks(log: str, pid: int) -> list[int]:
    """pks that worker ``pid`` logged as received (INFO log of ``tests.settings_broker``).

    A worker logs "CQRS is received" as it starts applying a message, before its write.
    """
    pattern = rf'^\S+ \S+ {pid} INFO CQRS is received: pk = (\d+) '
    return [int(pk) for pk in re.findall(pattern, log, re.MULTILINE)]


def handles_signal(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has installed a handler for ``signum`` (``SigCgt`` in /proc)."""
    try:
        status = Path(f'/proc/{pid}/status').read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith('SigCgt:'))
    return bool(int(caught.split()[1], 16) & (1 << (signum - 1)))


@contextmanager
def sqlite_write_lock(path: Path):
    """Hold the write lock of the SQLite database ``path`` (``BEGIN IMMEDIATE``) until exit."""
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        connection.execute('BEGIN IMMEDIATE')
        yield connection
    finally:
        if connection.in_transaction:
            connection.execute('ROLLBACK')
        connection.close()


def _pg_admin(statement: str) -> None:
    """Run CREATE / DROP DATABASE on the PostgreSQL server of the broker tests."""
    import psycopg

    with psycopg.connect(dbname='postgres', autocommit=True, **PG_SERVER) as connection:
        connection.execute(statement)


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
    """This test process as a master service publishing to RabbitMQ under unique names.

    The publisher starts and ends fresh (``reset_publisher``): no state leaks between tests.
    """

    def configure(transport=RABBIT, url=None, **replica):
        settings = cqrs_settings_for(transport, url or amqp_url, names, **replica)
        override = override_settings(CQRS=settings)
        override.enable()
        overrides.append(override)
        return settings

    overrides = []
    reset_publisher()
    yield configure
    reset_publisher()
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

    def extend_settings(self, code: str) -> ReplicaService:
        """Run this service's commands with ``tests.settings_broker`` followed by ``code``.

        ``code`` is Python run at the end of a settings module of this service's own, e.g.
        ``"CQRS['master']['outbox'] = True"``; it applies to the next ``manage`` / ``start``.
        """
        module = f'settings_{self.db_path.stem.replace("-", "_")}'
        (self.db_path.parent / f'{module}.py').write_text(
            f'from tests.settings_broker import *  # noqa: F403\n\n{code}\n'
        )
        self.env['PYTHONPATH'] = os.pathsep.join((str(ROOT), str(self.db_path.parent)))
        self.env['DJANGO_SETTINGS_MODULE'] = module
        return self

    def spawn(self, *args: str) -> subprocess.Popen:
        """Start ``manage.py <args>`` in the background, its output going to ``log()``."""
        with self.log_path.open('a') as log:
            return subprocess.Popen(
                [sys.executable, '-m', 'django', *args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def drop(self) -> None:
        """Remove the service's database (the SQLite file goes with ``tmp_path``)."""


class PostgresReplicaService(ReplicaService):
    """A replica service whose database is a PostgreSQL database of its own.

    The server is the one of ``tests.settings_pg`` (``CQRS_TEST_PG_*`` variables); the
    database is created here and dropped by ``drop()``.
    """

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        touched('postgresql')
        self.pg_name = f'cqrs_transport_{uuid.uuid4().hex[:12]}'
        _pg_admin(f'CREATE DATABASE {self.pg_name}')
        super().__init__(
            tmp_path,
            {**env, 'CQRS_TEST_DB_ENGINE': 'postgresql', 'CQRS_TEST_DB_NAME': self.pg_name},
        )

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(dbname=self.pg_name, autocommit=True, **PG_SERVER) as connection:
            return connection.execute(sql.replace('?', '%s'), params).fetchall()

    def drop(self) -> None:
        _pg_admin(f'DROP DATABASE IF EXISTS {self.pg_name} WITH (FORCE)')


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
        kind = PostgresReplicaService if vendor == 'postgresql' else ReplicaService
        service = kind(tmp_path, service_env)
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop()
        service.drop()


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
