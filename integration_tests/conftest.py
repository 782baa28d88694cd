"""Shared fixtures of the multi-service integration tests.

Every test runs real services as separate processes: a master service and one or more replica
services, each with its own settings, its own SQLite database and its own environment, talking
through the RabbitMQ broker on ``CQRS_TEST_AMQP_URL`` (default ``127.0.0.1:5672``) under an
exchange and queues of their own (deleted afterwards). Tests look at the results in the
services' database files with ``sqlite3``, never in logs.

Two kinds of services:

- the demo projects (``examples/demo_project/{master,replica}_service``, run with
  ``python manage.py`` in their directory; the environment variables ``DEMO_DATA_DIR``,
  ``DEMO_AMQP_URL``, ``DEMO_EXCHANGE`` and ``DEMO_QUEUE`` choose the database directory and
  the broker names): fixture ``demo``;
- the core test project (``tests.settings_broker``, whose models include the failing
  ``FlakyModel`` / ``FlakyReplica``): fixture ``core``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pika
import pytest
from pika.exceptions import AMQPError, ChannelClosedByBroker

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / 'examples' / 'demo_project'
MASTER_DIR = DEMO_DIR / 'master_service'
REPLICA_DIR = DEMO_DIR / 'replica_service'
AMQP_URL = os.environ.get('CQRS_TEST_AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672/%2F')
PYTHON = sys.executable

# Generous: the tests assert on outcomes, never on how fast they happen.
TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0

# Variables of the pytest process that must not leak into a service's environment.
_PRIVATE_ENV = ('DJANGO_SETTINGS_MODULE', 'DJANGO_CONFIGURATION', 'PYTEST_CURRENT_TEST')


def wait_for(predicate, timeout: float = TIMEOUT, interval: float = 0.1, message='condition'):
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


def base_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _PRIVATE_ENV}
    env['PYTHONUNBUFFERED'] = '1'
    return env


def last_json_line(output: str):
    """The JSON document on the last non-empty line of a command's stdout."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, 'the command printed nothing'
    return json.loads(lines[-1])


# --- broker ------------------------------------------------------------------------------------


class Broker:
    """This test's exchange and queues on the shared RabbitMQ; all deleted at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.suffix = uuid.uuid4().hex[:10]
        self.exchange = f'cqrs_it_{self.suffix}'
        self.queues: list[str] = []

    def queue(self, name: str = 'replica') -> str:
        """A queue name unique to this test; it and its dead-letter queue are cleaned up."""
        queue = f'{name}_{self.suffix}'
        self.queues += [queue, f'dead_letter_{queue}']
        return queue

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(self.url))

    def queue_state(self, name: str) -> tuple[int, int] | None:
        """(ready messages, consumers) of a queue; None when it does not exist."""
        connection = self.connect()
        try:
            channel = connection.channel()
            try:
                frame = channel.queue_declare(name, passive=True)
            except ChannelClosedByBroker:
                return None
            return frame.method.message_count, frame.method.consumer_count
        finally:
            if connection.is_open:
                connection.close()

    def cleanup(self) -> None:
        connection = self.connect()
        try:
            channel = connection.channel()
            for queue in self.queues:
                channel.queue_delete(queue)
            channel.exchange_delete(self.exchange)
        finally:
            if connection.is_open:
                connection.close()


@pytest.fixture(scope='session')
def amqp_url():
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except AMQPError as exc:
        pytest.fail(
            f'RabbitMQ at {AMQP_URL} is not reachable ({exc!r}); start it with '
            'scripts/services.sh up rabbitmq'
        )
    return AMQP_URL


@pytest.fixture
def broker(amqp_url):
    broker = Broker(amqp_url)
    yield broker
    broker.cleanup()


# --- services ----------------------------------------------------------------------------------


class Service:
    """One Django service: a working directory, a command prefix, an environment, a database.

    ``manage()`` runs a management command to completion; ``spawn()`` starts a long-running
    one (its output goes to ``<name>.log``); ``stop()`` ends every process it spawned.
    """

    def __init__(
        self,
        name: str,
        *,
        cwd: Path,
        command: list[str],
        env: dict[str, str],
        db_path: Path,
        log_dir: Path,
        broker: Broker,
        queue: str | None = None,
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.command = command
        self.env = env
        self.db_path = db_path
        self.log_path = log_dir / f'{name}.log'
        self.broker = broker
        self.queue = queue
        self.processes: list[subprocess.Popen] = []
        self.consumer: subprocess.Popen | None = None

    # commands

    def manage(
        self, *args: str, input: str | None = None, check: bool = True, timeout=COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess:
        """Run a management command; fail the test with its stderr when it fails."""
        result = subprocess.run(
            [*self.command, *args],
            cwd=self.cwd,
            env=self.env,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f'{self.name}: {" ".join(args)[:200]} exited with {result.returncode}\n'
                f'stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-4000:]}'
            )
        return result

    def shell(self, code: str):
        """Run Python code with ``manage.py shell -c``; the JSON on its last stdout line."""
        return last_json_line(self.manage('shell', '-c', code).stdout)

    def shell_command(self, *args: str) -> str:
        """A shell fragment running ``manage.py args`` in this service's directory and env.

        For real pipelines: ``sh -c 'A | B | C'`` with each stage in its own service.
        """
        base = base_env()
        own = {key: value for key, value in self.env.items() if base.get(key) != value}
        assignments = ' '.join(shlex.quote(f'{key}={value}') for key, value in own.items())
        command = ' '.join(shlex.quote(part) for part in [*self.command, *args])
        return f'(cd {shlex.quote(str(self.cwd))} && env {assignments} {command})'

    def spawn(self, *args: str) -> subprocess.Popen:
        """Start ``args`` in its own process group, appending its output to the log."""
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

    def log_tail(self, size: int = 3000) -> str:
        return self.log_path.read_text()[-size:] if self.log_path.exists() else ''

    # consumer

    def start_consumer(self, *args: str, workers: int = 1) -> subprocess.Popen:
        """``cqrs_consume -w workers`` ; returns once its workers consume the queue."""
        assert self.queue, f'{self.name} is not a replica service'
        process = self.consumer = self.spawn('cqrs_consume', '-w', str(workers), *args)

        def ready():
            if process.poll() is not None:
                pytest.fail(
                    f'{self.name}: cqrs_consume exited with {process.returncode}:\n'
                    f'{self.log_tail()}'
                )
            state = self.broker.queue_state(self.queue)
            return state is not None and state[1] >= workers

        wait_for(ready, message=lambda: f'{workers} consumers on {self.queue}: {self.log_tail()}')
        return process

    def stop_consumer(self) -> int | None:
        """SIGTERM the consumer (a graceful stop) and wait until it and its workers exit."""
        process, self.consumer = self.consumer, None
        if process is None:
            return None
        returncode = stop_process(process)
        wait_for(
            lambda: (self.broker.queue_state(self.queue) or (0, 0))[1] == 0,
            message=f'the consumers of {self.queue} to go away',
        )
        return returncode

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        self.consumer = None

    # database

    def query(self, sql: str, params: tuple = ()) -> list[dict]:
        connection = sqlite3.connect(self.db_path, timeout=30)
        connection.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in connection.execute(sql, params)]
        finally:
            connection.close()

    def execute(self, sql: str, params: tuple = ()) -> int:
        """Change the database behind the service's back; returns the rows changed."""
        connection = sqlite3.connect(self.db_path, timeout=30)
        try:
            with connection:
                return connection.execute(sql, params).rowcount
        finally:
            connection.close()

    def rows(self, table: str, columns: str = '*') -> dict:
        """Rows of a table keyed by id."""
        return {row['id']: row for row in self.query(f'SELECT {columns} FROM {table}')}


def stop_process(process: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM a process we started; SIGKILL its process group if it does not exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    return process.returncode


# --- the demo projects ---------------------------------------------------------------------


def demo_env(data_dir: Path, broker_url: str, exchange: str, queue: str | None) -> dict:
    env = base_env()
    env.update(
        DEMO_DATA_DIR=str(data_dir),
        DEMO_AMQP_URL=broker_url,
        DEMO_EXCHANGE=exchange,
        DEMO_LOG_LEVEL='INFO',
    )
    if queue is not None:
        env['DEMO_QUEUE'] = queue
    return env


@pytest.fixture(scope='session')
def demo_databases(tmp_path_factory, amqp_url):
    """Migrated master and replica databases, made once and copied for every service."""
    data_dir = tmp_path_factory.mktemp('demo-template')
    env = demo_env(data_dir, amqp_url, 'cqrs_it_unused', 'cqrs_it_unused')
    for directory in (MASTER_DIR, REPLICA_DIR):
        result = subprocess.run(
            [PYTHON, 'manage.py', 'migrate', '--noinput', '-v', '0'],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        if result.returncode != 0:
            pytest.fail(f'migrate in {directory.name} failed:\n{result.stderr[-4000:]}')
    paths = {'master': data_dir / 'master.sqlite3', 'replica': data_dir / 'replica.sqlite3'}
    for path in paths.values():
        assert path.exists(), path
        assert not Path(f'{path}-wal').exists() or not Path(f'{path}-wal').stat().st_size
    return paths


class Demo:
    """Factory of demo services sharing one test's exchange."""

    def __init__(self, tmp_path: Path, broker: Broker, databases: dict) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.databases = databases
        self.services: list[Service] = []

    def _service(self, name: str, kind: str, queue: str | None) -> Service:
        data_dir = self.tmp_path / name
        data_dir.mkdir()
        db_path = data_dir / f'{kind}.sqlite3'
        shutil.copyfile(self.databases[kind], db_path)
        service = Service(
            name,
            cwd=MASTER_DIR if kind == 'master' else REPLICA_DIR,
            command=[PYTHON, 'manage.py'],
            env=demo_env(data_dir, self.broker.url, self.broker.exchange, queue),
            db_path=db_path,
            log_dir=self.tmp_path,
            broker=self.broker,
            queue=queue,
        )
        self.services.append(service)
        return service

    def master(self, name: str = 'master') -> Service:
        return self._service(name, 'master', None)

    def replica(self, name: str = 'replica') -> Service:
        return self._service(name, 'replica', self.broker.queue(name))

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


@pytest.fixture
def demo(tmp_path, broker, demo_databases):
    """``demo.master()`` / ``demo.replica(name)``: demo services; all stopped at the end."""
    factory = Demo(tmp_path, broker, demo_databases)
    yield factory
    factory.stop()


# Master-side snippets for ``manage.py shell -c`` in the demo master.
DEMO_SEED = """
import json
from decimal import Decimal
from catalog.models import Author, Book, Publisher
publisher = Publisher.objects.create(name='Northwind Press', country='UK')
author = Author.objects.create(name='Ada Park', publisher=publisher)
books = [
    Book.objects.create(title=f'Book {number}', author=author, price=Decimal(f'{number}.50'))
    for number in range(1, COUNT + 1)
]
print(json.dumps(
    {'publisher': publisher.pk, 'author': author.pk, 'books': [book.pk for book in books]}
))
"""


def seed_demo(master: Service, count: int = 5) -> dict:
    """One publisher, one author and ``count`` books created on the master (published)."""
    return master.shell(DEMO_SEED.replace('COUNT', str(count)))


BOOK_COLUMNS = 'id, author_id, title, price, cqrs_revision, cqrs_updated'


def books(service: Service) -> dict:
    """Books of a demo master or replica keyed by id (the columns both sides share)."""
    table = 'catalog_book' if service.queue is None else 'replica_book'
    return service.rows(table, BOOK_COLUMNS)


def wait_books_equal(master: Service, replica: Service, timeout: float = TIMEOUT) -> dict:
    """Wait until the replica's books are exactly the master's; returns them."""
    wait_for(
        lambda: books(master) == books(replica),
        timeout,
        message=lambda: (
            f'{replica.name} books to equal the master ones\nmaster:  {books(master)}\n'
            f'replica: {books(replica)}\nconsumer log: {replica.log_tail()}'
        ),
    )
    return books(replica)


# --- the core test project ---------------------------------------------------------------------


@pytest.fixture
def core(tmp_path, broker):
    """``core(name, queue=None, **env)``: services of ``tests.settings_broker``."""
    services: list[Service] = []

    def make(name: str, queue: str | None = None, **extra: str) -> Service:
        db_path = tmp_path / f'{name}.sqlite3'
        env = base_env()
        env.update(
            DJANGO_SETTINGS_MODULE='tests.settings_broker',
            PYTHONPATH=str(ROOT),
            CQRS_TEST_DB=str(db_path),
            CQRS_TEST_TRANSPORT='dj_cqrs.transport.RabbitMQTransport',
            CQRS_TEST_URL=broker.url,
            CQRS_TEST_EXCHANGE=broker.exchange,
            CQRS_TEST_QUEUE=queue or f'unused_{broker.suffix}',
            CQRS_TEST_LOG_LEVEL='INFO',
            **{key: str(value) for key, value in extra.items()},
        )
        service = Service(
            name,
            cwd=ROOT,
            command=[PYTHON, '-m', 'django'],
            env=env,
            db_path=db_path,
            log_dir=tmp_path,
            broker=broker,
            queue=queue,
        )
        services.append(service)
        service.manage('migrate', '--run-syncdb', '-v', '0')
        return service

    yield make
    for service in reversed(services):
        service.stop()


def pipeline(*stages: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``sh -c 'A | B | C'`` (stages from ``Service.shell_command``); fail if it fails."""
    script = ' | '.join(stages)
    result = subprocess.run(
        ['sh', '-c', script],
        env=base_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f'pipeline exited with {result.returncode}: {script}\n'
            f'stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-4000:]}'
        )
    return result
