"""The one test harness of ``tests/`` and ``integration_tests/``: helpers shared by both trees.

Plain functions and classes only; the fixtures built on them live in the root ``conftest.py``
(shared by both trees), ``tests/transport/conftest.py`` and ``integration_tests/conftest.py``.
The brokers and the PostgreSQL server come from ``scripts/services.sh up``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pika
import pika.exceptions
import pytest

from tests._evidence import touched

ROOT = Path(__file__).resolve().parents[1]
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

SIMPLEST = 'dj_replica_simplestreplica'
MASTER_TABLE = 'dj_master_simplestmodel'
OUTBOX = 'dj_cqrs_outbox'
# Generous: the tests assert on outcomes, never on how fast they happen.
TIMEOUT = 60.0


def wait_for(predicate, timeout: float = TIMEOUT, interval: float = 0.05, message='condition'):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``.

    ``message`` may be a callable, evaluated only on failure (e.g. to show the current rows).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            pytest.fail(f'timed out after {timeout} s waiting for {text}')
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
    """Close this process's publishing connections; forget a broker unreachable a moment ago
    and the messages not confirmed.

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
    # Messages never confirmed (e.g. the broker of the test is gone) would be published again
    # on the next connection, into the next test.
    publisher._unconfirmed.clear()
    publisher._nacked.clear()


def queue_depth(channel, queue: str) -> int:
    """Ready messages in ``queue`` (which must exist), as the broker counts them.

    ``channel`` is a pika channel, or the URL of a broker (amqp:// or Kombu's redis://) to ask on
    a connection of its own.
    """
    if isinstance(channel, str) and channel.startswith('redis'):
        import redis

        client = redis.Redis.from_url(channel)
        try:
            return client.llen(queue)
        finally:
            client.close()
    if isinstance(channel, str):
        connection = pika.BlockingConnection(pika.URLParameters(channel))
        try:
            return queue_depth(connection.channel(), queue)
        finally:
            connection.close()
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


APPLIED_SIMPLEST = re.compile(r'CQRS is applied: pk = (\d+) \(simplest\)')
RECEIVED_SIMPLEST = re.compile(r'CQRS is received: pk = (\d+) \(simplest\)')


def applied_simplest(replica) -> Counter:
    """How many times the replica log says each 'simplest' pk was applied."""
    return Counter(int(pk) for pk in APPLIED_SIMPLEST.findall(replica.log()))


def received_pks(log: str, pid: int) -> list[int]:
    """pks that worker ``pid`` logged as received (INFO log of ``tests.settings_broker``).

    A worker logs "CQRS is received" as it starts applying a message, before its write.
    """
    pattern = rf'^\S+ \S+ {pid} INFO CQRS is received: pk = (\d+) '
    return [int(pk) for pk in re.findall(pattern, log, re.MULTILINE)]


def stop_process(process: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM a process we started and return its exit code; SIGKILL it if it does not exit
    in ``timeout`` seconds (its whole process group when it leads one, i.e. was started with
    ``start_new_session=True``)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                if os.getpgid(process.pid) == process.pid:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
            except ProcessLookupError:
                pass
            process.wait()
    return process.returncode


# Variables of the pytest process that must not leak into a service's environment.
_PRIVATE_ENV = ('DJANGO_SETTINGS_MODULE', 'DJANGO_CONFIGURATION', 'PYTEST_CURRENT_TEST')


def base_env() -> dict[str, str]:
    """This process's environment without what makes a process one of the services (Django
    settings, ``CQRS_TEST_*``): each service brings its own."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _PRIVATE_ENV and not key.startswith('CQRS_TEST_')
    }
    env['PYTHONUNBUFFERED'] = '1'
    return env


def shell_command(service, *args: str) -> str:
    """A shell fragment running ``args`` with ``service``'s command prefix (e.g. ``manage.py``),
    in its directory and environment (``service.command``, ``.cwd``, ``.env``).

    For real pipelines (``pipeline``): each stage is a process of its own service.
    """
    base = base_env()
    own = {key: value for key, value in service.env.items() if base.get(key) != value}
    assignments = ' '.join(shlex.quote(f'{key}={value}') for key, value in own.items())
    command = ' '.join(shlex.quote(part) for part in [*service.command, *args])
    return f'(cd {shlex.quote(str(service.cwd))} && env {assignments} {command})'


def pipeline(
    *stages: str, pipefail: bool = True, check: bool = False, timeout: float = 180
) -> subprocess.CompletedProcess:
    """Run ``stage | stage | ...`` (stages from ``shell_command``) in bash; with ``check``,
    fail the test unless it exits with 0."""
    script = ' | '.join(stages)
    if pipefail:
        script = f'set -o pipefail; {script}'
    result = subprocess.run(
        ['bash', '-c', script],
        cwd=ROOT,
        env=base_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert_succeeded(result, f'pipeline {script}')
    return result


def assert_succeeded(result: subprocess.CompletedProcess, what: str) -> None:
    """Fail the test, showing the output of ``what``, unless ``result`` exited with 0."""
    if result.returncode != 0:
        pytest.fail(
            f'{what} exited with {result.returncode}\n'
            f'stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-4000:]}'
        )


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


def pg_connect(dbname: str):
    """An autocommit connection to database ``dbname`` of the PostgreSQL test server."""
    import psycopg

    return psycopg.connect(dbname=dbname, autocommit=True, connect_timeout=10, **PG_SERVER)


def pg_admin(statement) -> None:
    """Run CREATE / DROP DATABASE on the server's ``postgres`` database."""
    with pg_connect('postgres') as connection:
        connection.execute(statement)


def cqrs_settings(*, master: dict | None = None, replica: dict | None = None, **top) -> dict:
    """A deep copy of the current ``settings.CQRS``: ``master`` / ``replica`` merged into its
    sections, ``top`` keys replaced."""
    import copy

    from django.conf import settings

    conf = copy.deepcopy(settings.CQRS)
    conf.update(top)
    for section, changes in (('master', master), ('replica', replica)):
        if changes:
            conf[section] = {**conf.get(section, {}), **changes}
    return conf


def override_cqrs(*, master: dict | None = None, replica: dict | None = None, **top):
    """``override_settings`` of ``CQRS`` as ``cqrs_settings`` builds it (decorator or context)."""
    from django.test import override_settings

    return override_settings(CQRS=cqrs_settings(master=master, replica=replica, **top))


def cqrs_settings_for(transport, url, names, **replica):
    return {
        'transport': transport,
        'url': url,
        'exchange': names['exchange'],
        'queue': names['queue'],
        'master': {'CQRS_MESSAGE_TTL': 3600},
        'replica': {'CQRS_MAX_RETRIES': 3, 'CQRS_RETRY_DELAY': 1, **replica},
    }


def settle_publisher(timeout: float = 10) -> None:
    """Wait for the broker's confirms of what this process published.

    Unconfirmed messages are kept for the next connection: left over, they would be published
    again into the next test, whose exchange differs. The conftest ``master`` fixture calls
    this at the end of each test, then ``reset_publisher``.
    """
    from dj_cqrs.transport import RabbitMQTransport

    RabbitMQTransport.flush(timeout=timeout)


class Broker:
    """This test's exchange and queues on a RabbitMQ, seen through a pika connection of the test
    itself: capture queues, queue counts, hand publishing.

    ``names`` is the dict of the ``names`` fixture, which deletes the queues named in it.
    """

    def __init__(self, url: str, names: dict) -> None:
        self.url = url
        self.names = names
        self.exchange = names['exchange']
        self.suffix = names.get('suffix') or uuid.uuid4().hex[:10]
        self.connection = self.connect()
        self.channel = self.connection.channel()
        self.channel.exchange_declare(self.exchange, 'topic', durable=True)

    def connect(self) -> pika.BlockingConnection:
        """A new connection to the broker (the caller closes it)."""
        return pika.BlockingConnection(pika.URLParameters(self.url))

    def queue(self, name: str = 'replica') -> str:
        """A queue name unique to this test; it and its dead-letter queue are deleted after."""
        queue = f'{name}_{self.suffix}'
        self.names.setdefault('extra_queues', []).extend([queue, f'dead_letter_{queue}'])
        return queue

    def queue_state(self, queue: str) -> tuple[int, int] | None:
        """(ready messages, consumers) of ``queue``; None when it does not exist.

        On a connection of its own, so that it can be called from any thread at any time.
        """
        connection = self.connect()
        try:
            frame = connection.channel().queue_declare(queue, passive=True)
            return frame.method.message_count, frame.method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return None
        finally:
            if connection.is_open:
                connection.close()

    def capture(self, routing_key: str = '#') -> str:
        """Declare a queue bound to the test exchange; deleted by the ``names`` fixture."""
        queue = f'capture_{uuid.uuid4().hex[:10]}'
        self.names.setdefault('extra_queues', []).append(queue)
        self.channel.queue_declare(queue, durable=True)
        self.channel.queue_bind(queue, self.exchange, routing_key)
        return queue

    def count(self, queue: str) -> int:
        """Ready messages in ``queue`` (the queue must exist)."""
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def take(self, queue: str, number: int, timeout: float = 30) -> list[tuple]:
        """Consume (ack) exactly ``number`` messages: [(routing key, properties, body dict)]."""
        messages = []

        def collect():
            while len(messages) < number:
                method, properties, body = self.channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return False
                messages.append((method.routing_key, properties, json.loads(body)))
            return True

        wait_for(collect, timeout, message=f'{number} messages in {queue} (got {messages})')
        return messages

    def peek(self, queue: str, number: int, timeout: float = 30) -> list[tuple]:
        """Like ``take`` but the messages are put back (in order) afterwards."""
        deliveries = []

        def collect():
            while len(deliveries) < number:
                method, properties, body = self.channel.basic_get(queue, auto_ack=False)
                if method is None:
                    return False
                deliveries.append((method, properties, body))
            return True

        try:
            wait_for(collect, timeout, message=f'{number} messages in {queue}')
        finally:
            if deliveries:
                self.channel.basic_nack(deliveries[-1][0].delivery_tag, multiple=True)
        return [(m.routing_key, p, json.loads(b)) for m, p, b in deliveries]

    def publish(self, body: bytes | str | dict, routing_key: str) -> None:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        properties = pika.BasicProperties(content_type='text/plain', delivery_mode=2)
        self.channel.basic_publish(self.exchange, routing_key, body, properties)

    def bind_replica_queue(self, *routing_keys: str) -> Broker:
        """Declare the test's replica queue and bind it to ``routing_keys`` of the exchange."""
        self.channel.queue_declare(self.names['queue'], durable=True)
        for routing_key in routing_keys:
            self.channel.queue_bind(self.names['queue'], self.exchange, routing_key)
        return self

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def worker_pids(replica) -> list[int]:
    """Worker processes of a running ``cqrs_consume`` (children of the supervisor)."""
    children: set[int] = set()
    for task in Path(f'/proc/{replica.process.pid}/task').iterdir():
        try:
            children.update(int(pid) for pid in (task / 'children').read_text().split())
        except OSError:
            continue
    return sorted(children)


# The keys of a message body on the wire, as django-cqrs writes them.
WIRE_KEYS = frozenset(
    {
        'signal_type',
        'cqrs_id',
        'instance_data',
        'previous_data',
        'instance_pk',
        'correlation_id',
        'retries',
        'expires',
        'meta',
    }
)


def wire_body(pk: int, **changes) -> dict:
    """A valid SAVE body for 'simplest', as the master would send it."""
    body = {
        'signal_type': 'SAVE',
        'cqrs_id': 'simplest',
        'instance_data': {
            'id': pk,
            'name': f'hand {pk}',
            'cqrs_revision': 0,
            'cqrs_updated': '2024-01-01 00:00:00+00:00',
        },
        'previous_data': None,
        'instance_pk': pk,
        'correlation_id': None,
        'retries': 0,
        'expires': None,
        'meta': {},
    }
    body.update(changes)
    return body


def master_rows() -> list[tuple[int, int]]:
    """(id, cqrs_revision) of this process's master ``SimplestModel`` rows, sorted."""
    from tests.dj_master.models import SimplestModel

    return sorted(SimplestModel.objects.values_list('id', 'cqrs_revision'))


def replica_rows(replica) -> list[tuple[int, int]]:
    """(id, cqrs_revision) of the replica's ``SimplestReplica`` rows, sorted."""
    return sorted(replica.query(f'SELECT id, cqrs_revision FROM {SIMPLEST}'))


def master_names() -> list[tuple[int, str, int]]:
    """(id, name, cqrs_revision) of this process's master ``SimplestModel`` rows, sorted."""
    from tests.dj_master.models import SimplestModel

    return sorted(SimplestModel.objects.values_list('id', 'name', 'cqrs_revision'))


def replica_names(replica, table: str = SIMPLEST) -> list[tuple[int, str, int]]:
    """(id, name, cqrs_revision) of the rows of a replica ``table``, sorted."""
    return sorted(replica.query(f'SELECT id, name, cqrs_revision FROM {table}'))


def clean_redis(url: str, names: dict) -> None:
    """Remove the Redis keys of this test's queues and exchange bindings (Kombu on Redis)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        queues = [names['queue'], names['dead_letter_queue'], *names.get('extra_queues', ())]
        bindings = [
            f'_kombu.{kind}.{names["exchange"]}' for kind in ('binding', 'binding_permanent')
        ]
        client.delete(*queues, *bindings)
    finally:
        client.close()


def assert_replica_equals_master(replica, timeout: float = 90) -> None:
    """Wait until the replica table equals the master table; fail with a precise diff."""
    expected = master_rows()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica_rows(replica) == expected:
            return
        time.sleep(0.2)
    actual = replica_rows(replica)
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert actual == expected, (
        f'replica != master after {timeout} s: master {len(expected)} rows, replica '
        f'{len(actual)}; missing or stale {len(missing)} (first {missing[:10]}), unexpected '
        f'{len(extra)} (first {extra[:10]})\nreplica log tail:\n{replica.log()[-3000:]}'
    )


class ReplicaService:
    """A replica service: its own SQLite database and a ``cqrs_consume`` process."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.db_path = tmp_path / f'replica-{uuid.uuid4().hex[:6]}.sqlite3'
        self.log_path = self.db_path.with_suffix('.log')
        self.env = {**os.environ, **env, 'CQRS_TEST_DB': str(self.db_path)}
        self.env['DJANGO_SETTINGS_MODULE'] = 'tests.settings_broker'
        self.env['PYTHONPATH'] = str(ROOT)
        self.cwd = ROOT
        self.command = [sys.executable, '-m', 'django']
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
        """Stop ``cqrs_consume`` (``stop_process``); its exit code, None if never started."""
        return None if self.process is None else stop_process(self.process, timeout)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ''

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        connection = sqlite3.connect(self.db_path, timeout=30)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def execute(self, sql: str, params: tuple = ()) -> int:
        """Change the database behind the service's back (committed); the rows changed."""
        connection = sqlite3.connect(self.db_path, timeout=30)
        try:
            with connection:
                return connection.execute(sql, params).rowcount
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
        pg_admin(f'CREATE DATABASE {self.pg_name}')
        super().__init__(
            tmp_path,
            {**env, 'CQRS_TEST_DB_ENGINE': 'postgresql', 'CQRS_TEST_DB_NAME': self.pg_name},
        )

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(dbname=self.pg_name, autocommit=True, **PG_SERVER) as connection:
            return connection.execute(sql.replace('?', '%s'), params).fetchall()

    def execute(self, sql: str, params: tuple = ()) -> int:
        import psycopg

        with psycopg.connect(dbname=self.pg_name, autocommit=True, **PG_SERVER) as connection:
            return connection.execute(sql.replace('?', '%s'), params).rowcount

    def drop(self) -> None:
        pg_admin(f'DROP DATABASE IF EXISTS {self.pg_name} WITH (FORCE)')


# --- helpers of the fault tests ----------------------------------------------------------------

RECONNECT = re.compile(r'CQRS consumer (lost the connection|cannot connect)')


@pytest.fixture(name='broker')
def private_node_broker(private_broker):
    """``broker`` of the fault tests: the module's private RabbitMQ node, running again after
    the test whatever happened. Import it into a test module to use it there."""
    from tests.transport.private_broker import port_open

    yield private_broker
    if not port_open(private_broker.port):
        private_broker.start_app()


def outbox_on():
    """``settings.CQRS['master']['outbox'] = True`` on top of what ``master(...)`` set."""
    return override_cqrs(master={'outbox': True})


def create_in_transactions(ids: list[int], transactions: int) -> None:
    """Create rows for ``ids`` in ``transactions`` transactions (published on each commit)."""
    from django.db import transaction

    from tests.dj_master.models import SimplestModel

    size = -(-len(ids) // transactions)
    for start in range(0, len(ids), size):
        with transaction.atomic():
            for pk in ids[start : start + size]:
                SimplestModel.objects.create(id=pk, name=f'row {pk}')


def relay_outbox() -> str:
    """Run ``cqrs_relay --once`` in this process; return what it wrote on stderr."""
    import io

    from django.core.management import call_command

    err = io.StringIO()
    call_command('cqrs_relay', '--once', '--min-age', '0', '--database', 'default', stderr=err)
    return err.getvalue()


@contextmanager
def write_lock(replica, vendor):
    """Block the replica's writes to the simplest table until exit."""
    if vendor == 'sqlite':
        with sqlite_write_lock(replica.db_path):
            yield
        return
    import psycopg

    with psycopg.connect(dbname=replica.pg_name, **PG_SERVER) as connection:
        connection.execute('LOCK TABLE dj_replica_simplestreplica IN EXCLUSIVE MODE')
        yield
        connection.rollback()


def dead_letters(kombu_url, amqp_url, queue):
    """``(body, expiration)`` of each message in a dead-letter queue, left in place."""
    if kombu_url.startswith('redis'):
        import redis

        client = redis.Redis.from_url(kombu_url)
        try:
            envelopes = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
        finally:
            client.close()
        return [
            (json.loads(base64.b64decode(e['body'])), e['properties'].get('expiration'))
            for e in envelopes
        ]
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        result = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return result
            result.append((json.loads(body), properties.expiration))
    finally:
        connection.close()


def master_service(replica_service, url: str, **env: str):
    """A master service with the outbox on (its own SQLite file, master table and outbox)."""
    return replica_service(url=url, **env).extend_settings("CQRS['master']['outbox'] = True")


def make_changes(master, url: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in the master's ``manage.py shell`` publishing to ``url``."""
    env = dict(master.env)
    master.env['CQRS_TEST_URL'] = url
    try:
        return master.manage('shell', '-c', code)
    finally:
        master.env = env


def call_exiting(command: str, *args: str) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``call_command(command, *args)`` in this process,
    for commands that end with ``SystemExit`` (``cqrs_status``)."""
    from django.core.management import call_command

    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(command, *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


@contextmanager
def full_queue(broker, names: dict, limit: int):
    """The replica queue of ``names``, bound to ``simplest``, refusing publishes (nacks) beyond
    ``limit`` messages while the block runs.

    A policy sets max-length / reject-publish (the limit of the ``x-max-length`` and
    ``x-overflow`` arguments), so that ``cqrs_consume`` can still declare the queue without
    arguments. ``broker`` is a private node (``rabbitmqctl``).
    """
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    channel.exchange_declare(names['exchange'], 'topic', durable=True)
    channel.queue_declare(names['queue'], durable=True)
    channel.queue_bind(names['queue'], names['exchange'], 'simplest')
    connection.close()
    policy = f'limit_{names["queue"]}'
    broker.ctl(
        'set_policy', policy, f'^{names["queue"]}$',
        f'{{"max-length": {limit}, "overflow": "reject-publish"}}', '--apply-to', 'queues',
    )  # fmt: skip
    try:
        yield
    finally:
        broker.ctl('clear_policy', policy)
