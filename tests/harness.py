"""The one test harness of ``tests/`` and ``integration_tests/``: helpers shared by both trees.

Plain functions and classes only; the fixtures built on them live in the root ``conftest.py``
(shared by both trees), ``tests/transport/conftest.py`` and ``integration_tests/conftest.py``.
The brokers and the PostgreSQL server come from ``scripts/services.sh up``.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime
from datetime import timezone as dt_timezone
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
    return run_process(
        ['bash', '-c', script], what=f'pipeline {script}', check=check, timeout=timeout
    )


def run_process(
    argv: list[str],
    *,
    what: str,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """Run ``argv`` to completion, its output captured as text (stdin: ``input`` or nothing);
    with ``check``, fail the test unless it exits with 0 (``assert_succeeded``)."""
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=base_env() if env is None else env,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert_succeeded(result, what)
    return result


def assert_succeeded(result: subprocess.CompletedProcess, what: str) -> None:
    """Fail the test, showing the output of ``what``, unless ``result`` exited with 0."""
    if result.returncode != 0:
        pytest.fail(
            f'{what} exited with {result.returncode}\n'
            f'stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-4000:]}'
        )


def free_port() -> int:
    """A free port below the ephemeral range.

    An ephemeral port could be taken, while the node is stopped, by a client socket connecting
    to it: on Linux a TCP connection to 127.0.0.1:P from local port P connects to itself.
    """
    try:
        low = int(Path('/proc/sys/net/ipv4/ip_local_port_range').read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(20000, max(20001, low - 1))
        with socket.socket() as sock:
            try:
                sock.bind(('127.0.0.1', port))
            except OSError:
                continue
            return port
    raise RuntimeError('no free port below the ephemeral range')


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


def cqrs_settings_for(transport, url, names, ssl_options=None, **replica):
    """``settings.CQRS`` of a master publishing with ``transport`` to ``url`` under the test's
    ``names`` (``ssl_options`` added when given; ``replica`` merged into its section)."""
    settings = {
        'transport': transport,
        'url': url,
        'exchange': names['exchange'],
        'queue': names['queue'],
        'master': {'CQRS_MESSAGE_TTL': 3600},
        'replica': {'CQRS_MAX_RETRIES': 3, 'CQRS_RETRY_DELAY': 1, **replica},
    }
    if ssl_options is not None:
        settings['ssl_options'] = ssl_options
    return settings


def settings_error(cqrs: dict) -> str:
    """The message of the ``ImproperlyConfigured`` that ``validate_settings`` raises for
    ``settings.CQRS = cqrs`` (the test fails if it raises nothing)."""
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from dj_cqrs.apps import validate_settings

    with override_settings(CQRS=cqrs), pytest.raises(ImproperlyConfigured) as excinfo:
        validate_settings()
    return str(excinfo.value)


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
    ``ssl_options`` (a ``pika.SSLOptions``) is for an ``amqps://`` URL.
    """

    def __init__(self, url: str, names: dict, ssl_options: pika.SSLOptions | None = None) -> None:
        self.url = url
        self.names = names
        self.ssl_options = ssl_options
        self.exchange = names['exchange']
        self.suffix = names.get('suffix') or uuid.uuid4().hex[:10]
        self.connection = self.connect()
        self.channel = self.connection.channel()
        self.channel.exchange_declare(self.exchange, 'topic', durable=True)

    def connect(self) -> pika.BlockingConnection:
        """A new connection to the broker (the caller closes it)."""
        parameters = pika.URLParameters(self.url)
        if self.ssl_options is not None:
            parameters.ssl_options = self.ssl_options
        return pika.BlockingConnection(parameters)

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

    def capture(self, routing_key: str = '#', *, name: str | None = None) -> str:
        """Declare a queue (``name`` or a new one) bound to the test exchange; deleted by the
        ``names`` fixture."""
        queue = name or f'capture_{uuid.uuid4().hex[:10]}'
        self.names.setdefault('extra_queues', []).append(queue)
        self.channel.queue_declare(queue, durable=True)
        self.channel.queue_bind(queue, self.exchange, routing_key)
        return queue

    def published_before_marker(self, queue: str) -> list[bytes]:
        """What reached ``queue`` (a ``capture``) before a marker published now
        (``bodies_before_marker``): an empty list proves that nothing was published."""
        return bodies_before_marker(self.channel, self.exchange, queue)

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


# --- services run as processes -------------------------------------------------------------


def last_json_line(output: str):
    """The JSON document on the last non-empty line of a command's stdout."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, 'the command printed nothing'
    return json.loads(lines[-1])


class SqliteDatabase:
    """A service's SQLite file. SQL of ``query`` / ``records`` / ``execute`` uses ``?``."""

    vendor = 'sqlite'

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f'<SQLite {self.path}>'

    def _run(self, sql: str, params, row_factory=None):
        connection = sqlite3.connect(self.path, timeout=30)
        connection.row_factory = row_factory
        try:
            with connection:
                cursor = connection.execute(sql, tuple(params))
                return cursor.fetchall() if cursor.description else cursor.rowcount
        finally:
            connection.close()

    def query(self, sql: str, params=()) -> list[tuple]:
        return self._run(sql, params)

    def records(self, sql: str, params=()) -> list[dict]:
        return [dict(row) for row in self._run(sql, params, sqlite3.Row)]

    def execute(self, sql: str, params=()) -> int:
        """Change the database behind the service's back (committed); the rows changed."""
        return self._run(sql, params)

    def drop(self) -> None:
        """Nothing to do: the file is in the test's temporary directory."""


class PostgresDatabase:
    """A service's database of its own on the PostgreSQL test server (``PG_SERVER``), made by
    ``create`` and dropped by ``drop``; read and changed in autocommit mode.

    SQL of ``query`` / ``records`` / ``execute`` uses ``?`` placeholders, as with SQLite.
    """

    vendor = 'postgresql'

    def __init__(self, name: str) -> None:
        touched('postgresql')
        self.name = name
        self._connection = None

    def __repr__(self) -> str:
        return f'<PostgreSQL database {self.name}>'

    @classmethod
    def create(cls, label: str, template: PostgresDatabase | None = None) -> PostgresDatabase:
        """``CREATE DATABASE`` with a name unique to this run (a copy of ``template``)."""
        from psycopg import sql

        slug = ''.join(char if char.isalnum() else '_' for char in label.lower())[:30]
        name = f'cqrs_t_{_RUN}_{next(_NUMBERS)}_{slug}'
        statement = sql.SQL('CREATE DATABASE {}').format(sql.Identifier(name))
        if template is not None:
            statement += sql.SQL(' TEMPLATE {}').format(sql.Identifier(template.name))
        pg_admin(statement)
        return cls(name)

    def _run(self, sql: str, params, row_factory=None):
        from psycopg.rows import tuple_row

        if self._connection is None or self._connection.closed or self._connection.broken:
            self._connection = pg_connect(self.name)
        with self._connection.cursor(row_factory=row_factory or tuple_row) as cursor:
            cursor.execute(sql.replace('%', '%%').replace('?', '%s'), tuple(params))
            return cursor.fetchall() if cursor.description else cursor.rowcount

    def query(self, sql: str, params=()) -> list[tuple]:
        return self._run(sql, params)

    def records(self, sql: str, params=()) -> list[dict]:
        from psycopg.rows import dict_row

        return self._run(sql, params, dict_row)

    def execute(self, sql: str, params=()) -> int:
        """Change the database behind the service's back (committed); the rows changed."""
        return self._run(sql, params)

    def drop(self) -> None:
        """Close our connection and drop the database, ending any session still on it."""
        from psycopg import sql

        if self._connection is not None:
            self._connection.close()
        pg_admin(
            sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(self.name))
        )


# PostgreSQL database names: unique to this pytest run and to each database made in it.
_RUN = uuid.uuid4().hex[:8]
_NUMBERS = itertools.count(1)


def new_database(vendor: str, label: str, path: Path, template=None):
    """A new database of ``vendor``: the SQLite file ``path`` (a copy of ``template``'s file
    when given), or a PostgreSQL database of its own (``PostgresDatabase.create``)."""
    if vendor == 'postgresql':
        return PostgresDatabase.create(label, template)
    if template is not None:
        shutil.copyfile(template.path, path)
    return SqliteDatabase(path)


class ManagedService:
    """One Django service run as processes: a command prefix (``manage.py`` or
    ``python -m django``), a working directory, an environment and a database of its own.

    ``manage()`` runs a management command to completion; ``spawn()`` starts a long-running
    one in its own process group, its output appended to ``log()``; ``start()`` / ``stop()``
    run the service's ``cqrs_consume`` (``process``); ``close()`` ends every process it
    started and drops its database. ``query()`` / ``records()`` / ``execute()`` read and change
    the database (SQL with ``?`` placeholders).
    """

    def __init__(
        self,
        name: str,
        *,
        cwd: Path,
        command: list[str],
        env: dict[str, str],
        database: SqliteDatabase | PostgresDatabase,
        log_path: Path,
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.command = command
        self.env = env
        self.database = database
        self.log_path = log_path
        self.processes: list[subprocess.Popen] = []
        self.process: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.name} on {self.database!r}>'

    # commands

    def manage(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run a management command; with ``check``, fail the test (showing its output) unless
        it exits with 0."""
        return run_process(
            [*self.command, *args],
            what=f'{self.name}: {" ".join(args)[:200]}',
            cwd=self.cwd,
            env=self.env,
            input=input,
            check=check,
            timeout=timeout,
        )

    def shell(self, code: str):
        """Run Python code with ``manage.py shell -c``; the JSON on its last stdout line."""
        return last_json_line(self.manage('shell', '-c', code).stdout)

    def shell_command(self, *args: str) -> str:
        """A shell fragment running ``manage.py args`` in this service (``shell_command``)."""
        return shell_command(self, *args)

    def spawn(self, *args: str) -> subprocess.Popen:
        """Start ``manage.py args`` in its own process group, its output going to ``log()``."""
        with self.log_path.open('a') as log:
            process = subprocess.Popen(
                [*self.command, *args],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ''

    def log_tail(self, size: int = 3000) -> str:
        return self.log()[-size:]

    # the consumer

    def start(self, *args: str) -> ManagedService:
        """Start ``cqrs_consume`` with ``args`` (``process``)."""
        self.process = self.spawn('cqrs_consume', *args)
        return self

    def stop(self, timeout: float = 30) -> int | None:
        """Stop ``cqrs_consume`` (``stop_process``); its exit code, None if never started."""
        process, self.process = self.process, None
        return None if process is None else stop_process(process, timeout)

    def close(self) -> None:
        """End every process this service started, then drop its database."""
        try:
            for process in reversed(self.processes):
                stop_process(process)
            self.process = None
        finally:
            self.database.drop()

    # the database

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.database.query(sql, params)

    def records(self, sql: str, params: tuple = ()) -> list[dict]:
        return self.database.records(sql, params)

    def execute(self, sql: str, params: tuple = ()) -> int:
        """Change the database behind the service's back (committed); the rows changed."""
        return self.database.execute(sql, params)

    def rows(self, table: str, columns: str = '*') -> dict:
        """Rows of a table keyed by id (as dicts)."""
        return {row['id']: row for row in self.records(f'SELECT {columns} FROM {table}')}


class ReplicaService(ManagedService):
    """A service of the core test project (``tests.settings_broker``, ``python -m django``):
    the replica (and master) apps with a database of its own, an SQLite file or, with
    ``vendor='postgresql'``, a PostgreSQL database; migrated when made."""

    def __init__(self, tmp_path: Path, env: dict[str, str], vendor: str = 'sqlite') -> None:
        name = f'replica-{uuid.uuid4().hex[:6]}'
        self.directory = tmp_path
        database = new_database(vendor, name, tmp_path / f'{name}.sqlite3')
        if database.vendor == 'postgresql':
            database_env = {'CQRS_TEST_DB_ENGINE': 'postgresql', 'CQRS_TEST_DB_NAME': database.name}
        else:
            database_env = {'CQRS_TEST_DB': str(database.path)}
        super().__init__(
            name,
            cwd=ROOT,
            command=[sys.executable, '-m', 'django'],
            env={
                **os.environ,
                **env,
                **database_env,
                'DJANGO_SETTINGS_MODULE': 'tests.settings_broker',
                'PYTHONPATH': str(ROOT),
            },
            database=database,
            log_path=tmp_path / f'{name}.log',
        )
        self.manage('migrate', '--run-syncdb', '-v', '0')

    def wait_ready(self, workers: int = 1, timeout: float = 30) -> None:
        wait_for(
            lambda: self.log().count('CQRS consumer is ready') >= workers,
            timeout,
            message=f'{workers} ready workers (log: {self.log_tail(2000)})',
        )

    def recorded_master_updated(self, cqrs_id: str = 'simplest') -> datetime | None:
        """The newest master ``cqrs_updated`` the workers have written as applied for
        ``cqrs_id`` (``dj_cqrs.replica_status``); None before their first write."""
        rows = self.query(
            'SELECT last_master_updated FROM dj_cqrs_replica_status WHERE cqrs_id = ?', (cqrs_id,)
        )
        value = rows[0][0] if rows else None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt_timezone.utc)
        return value

    def declare_queue(self) -> ReplicaService:
        """Run ``cqrs_consume`` until it is ready, then stop it: the replica queue exists
        (durable, bound) and nobody consumes it."""
        self.start('-w', '1').wait_ready()
        assert self.stop() == 0, self.log_tail()
        return self

    def count(self, table: str = SIMPLEST) -> int:
        return self.query(f'SELECT COUNT(*) FROM {table}')[0][0]

    def extend_settings(self, code: str) -> ReplicaService:
        """Run this service's commands with ``tests.settings_broker`` followed by ``code``.

        ``code`` is Python run at the end of a settings module of this service's own, e.g.
        ``"CQRS['master']['outbox'] = True"``; it applies to the next ``manage`` / ``start``.
        """
        module = f'settings_{self.name.replace("-", "_")}'
        (self.directory / f'{module}.py').write_text(
            f'from tests.settings_broker import *  # noqa: F403\n\n{code}\n'
        )
        self.env['PYTHONPATH'] = os.pathsep.join((str(ROOT), str(self.directory)))
        self.env['DJANGO_SETTINGS_MODULE'] = module
        return self


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
    """Relay every outbox row of the default database now (``relay_once``); its stderr."""
    return relay_once('--min-age', '0', '--database', 'default')


@contextmanager
def write_lock(replica):
    """Block the replica's writes to the simplest table until exit (on SQLite: to the whole
    database)."""
    if replica.database.vendor == 'sqlite':
        with sqlite_write_lock(replica.database.path):
            yield
        return
    import psycopg

    with psycopg.connect(dbname=replica.database.name, **PG_SERVER) as connection:
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

    with command_streams() as (out, err):
        try:
            call_command(command, *args)
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


# --- payloads and message bodies ---------------------------------------------------------------

PAYLOAD_UPDATED = '2024-05-01 10:00:00+00:00'


def instance_data(pk=1, rev: int = 0, updated: str = PAYLOAD_UPDATED, **fields) -> dict:
    """A row's ``instance_data`` as a master publishes it: ``id``, ``fields``, ``cqrs_revision``
    and ``cqrs_updated``; without ``fields`` it is what a DELETE carries."""
    return {'id': pk, **fields, 'cqrs_revision': rev, 'cqrs_updated': updated}


def payload(signal_type: str, cqrs_id: str, data, pk=None, **kwargs):
    """A ``dj_cqrs.dataclasses.TransportPayload`` of ``data`` (e.g. ``instance_data(...)``).

    ``pk`` defaults to ``data['id']`` (None when ``data`` is not a dict); ``kwargs`` are the
    payload's own (``previous_data``, ``correlation_id``, ``retries``, ``meta``, ...).
    """
    from dj_cqrs.dataclasses import TransportPayload

    if pk is None and isinstance(data, dict):
        pk = data.get('id')
    return TransportPayload(signal_type, cqrs_id, data, pk, **kwargs)


# --- command runners and log helpers -----------------------------------------------------------


@contextmanager
def command_streams(stdin: str | None = None):
    """``(stdout, stderr)`` buffers standing for ``sys.stdout`` / ``sys.stderr`` while the block
    runs, with ``sys.stdin`` reading ``stdin`` (empty by default)."""
    from contextlib import redirect_stderr, redirect_stdout
    from unittest import mock

    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.object(sys, 'stdin', io.StringIO(stdin or '')),
        redirect_stdout(out),
        redirect_stderr(err),
    ):
        yield out, err


def run_command(name: str, *args: str, stdin: str | None = None, **options) -> tuple[str, str]:
    """``(stdout, stderr)`` of ``call_command(name, *args, **options)`` in this process.

    What the command writes through ``self.stdout`` / ``self.stderr`` and what it writes
    straight to ``sys.stdout`` / ``sys.stderr`` (``-o -``, progress bars) are caught alike.
    """
    from django.core.management import call_command

    with command_streams(stdin) as (out, err):
        call_command(name, *args, **options)
    return out.getvalue(), err.getvalue()


def command_fails(name: str, *args: str, stdin: str | None = None, **options) -> tuple[str, str]:
    """``(message, stdout)`` of a command that must end with a ``CommandError`` of one line."""
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with command_streams(stdin) as (out, _err), pytest.raises(CommandError) as excinfo:
        call_command(name, *args, **options)
    message = str(excinfo.value)
    assert message.strip() and '\n' not in message, message
    return message, out.getvalue()


def command_error(name: str, *args: str, stdin: str | None = None, **options) -> str:
    """The one-line ``CommandError`` message a command must end with."""
    return command_fails(name, *args, stdin=stdin, **options)[0]


def relay_once(*args: str) -> str:
    """Run ``cqrs_relay --once *args`` in this process; return what it wrote on stderr."""
    return run_command('cqrs_relay', '--once', *args)[1]


def logged(caplog, level: str | None = None, logger: str = 'django-cqrs') -> list[str]:
    """The messages ``caplog`` holds from ``logger``; only those of ``level`` (a level name,
    ``'ERROR'``) when given."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == logger and (level is None or r.levelname == level)
    ]


def signal_types(payloads) -> list[str]:
    """The signal type of each payload, in order."""
    return [p.signal_type for p in payloads]


def outbox_rows_left(*fields: str) -> list[tuple]:
    """``fields`` of the outbox rows, oldest first, once the rows of the messages the broker
    has confirmed are deleted (``outbox.flush_published``)."""
    from dj_cqrs import outbox
    from dj_cqrs.models import CQRSOutboxMessage

    outbox.flush_published()
    return list(CQRSOutboxMessage.objects.order_by('id').values_list(*fields))


def recording_worker(delay_queue_max_size: int | None = 100):
    """``(worker, record)``: a replica ``Worker`` driven directly, whose acks, rejects and
    republished routing keys go to ``record.acked`` / ``.rejected`` / ``.published``."""
    from types import SimpleNamespace

    from dj_cqrs.transport._consuming import Worker
    from dj_cqrs.transport.mixins import LoggingMixin

    record = SimpleNamespace(acked=[], rejected=[], published=[])
    worker = Worker(
        LoggingMixin,
        'replica',
        ack=record.acked.append,
        reject=record.rejected.append,
        publish=lambda key, body, expiration: record.published.append(key),
        delay_queue_max_size=delay_queue_max_size,
    )
    return worker, record
