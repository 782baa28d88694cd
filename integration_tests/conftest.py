"""Shared fixtures of the multi-service integration tests.

Every test runs real services as separate processes: a master service and one or more replica
services, each with its own settings, its own database and its own environment, talking
through the RabbitMQ broker on ``CQRS_TEST_AMQP_URL`` (default ``127.0.0.1:5672``) under an
exchange and queues of their own (deleted afterwards). Tests look at the results in the
services' databases (``records`` / ``rows`` / ``execute`` of ``tests.harness.ManagedService``),
never in logs.

``CQRS_TEST_DB_VENDOR`` chooses the databases: ``sqlite`` (the default; a file per service) or
``postgresql`` (a database per service, made with ``CREATE DATABASE`` and dropped afterwards,
on the server of ``CQRS_TEST_PG_HOST`` / ``_PORT`` / ``_USER`` / ``_PASSWORD``, default
``cqrs:cqrs@127.0.0.1:5432``, a role allowed to create databases).

Two kinds of services:

- the demo projects (``examples/demo_project/{master,replica}_service``, run with
  ``python manage.py`` in their directory; the environment variables ``DEMO_DATA_DIR``,
  ``DEMO_AMQP_URL``, ``DEMO_EXCHANGE`` and ``DEMO_QUEUE`` choose the database directory and
  the broker names): fixture ``demo``;
- the core test project (``tests.settings_broker``): fixture ``replica_service`` of
  ``tests/transport`` and the helpers of ``tests.harness`` (the scenarios of the core project
  are tested there).

The broker (``broker``: this test's exchange and queues, ``tests.harness.Broker``), the services'
base (``ManagedService``), their databases (``new_database``) and the helpers (``wait_for``,
``stop_process``, ...) are those of ``tests/``: the root ``conftest.py`` and ``tests.harness``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.harness import (
    PG_SERVER,
    ROOT,
    TIMEOUT,
    Broker,
    ManagedService,
    PostgresDatabase,
    base_env,
    new_database,
    pg_connect,
    run_process,
    wait_for,
)

DEMO_DIR = ROOT / 'examples' / 'demo_project'
MASTER_DIR = DEMO_DIR / 'master_service'
REPLICA_DIR = DEMO_DIR / 'replica_service'
PYTHON = sys.executable

DB_VENDOR = os.environ.get('CQRS_TEST_DB_VENDOR', 'sqlite')
if DB_VENDOR not in ('sqlite', 'postgresql'):
    raise pytest.UsageError(
        f'CQRS_TEST_DB_VENDOR={DB_VENDOR!r}: expected "sqlite" (default) or "postgresql"'
    )

COMMAND_TIMEOUT = 120.0


# --- databases ---------------------------------------------------------------------------------


@pytest.fixture(scope='session')
def db_server():
    """The database vendor of the run; fails early when its PostgreSQL server is unreachable."""
    if DB_VENDOR == 'postgresql':
        try:
            pg_connect('postgres').close()
        except psycopg.Error as exc:
            pytest.fail(
                f'PostgreSQL at {PG_SERVER["host"]}:{PG_SERVER["port"]} is not reachable as '
                f'{PG_SERVER["user"]} ({exc}); start it with scripts/services.sh up postgres'
            )
    return DB_VENDOR


# --- services ----------------------------------------------------------------------------------


class DemoService(ManagedService):
    """A demo service (``manage.py`` in its directory) on this test's broker; a replica one has
    a ``queue`` and waits for its consumers on the broker (``start_consumer``)."""

    def __init__(self, name: str, *, broker: Broker, queue: str | None = None, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.broker = broker
        self.queue = queue

    def start_consumer(self, *args: str, workers: int = 1) -> subprocess.Popen:
        """``cqrs_consume -w workers``; returns once its workers consume the queue."""
        assert self.queue, f'{self.name} is not a replica service'
        process = self.start('-w', str(workers), *args).process

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
        returncode = self.stop()
        wait_for(
            lambda: (self.broker.queue_state(self.queue) or (0, 0))[1] == 0,
            message=f'the consumers of {self.queue} to go away',
        )
        return returncode


# --- the demo projects ---------------------------------------------------------------------


def demo_env(
    data_dir: Path, broker_url: str, exchange: str, queue: str | None, database=None
) -> dict:
    env = base_env()
    env.update(
        DEMO_DATA_DIR=str(data_dir),
        DEMO_AMQP_URL=broker_url,
        DEMO_EXCHANGE=exchange,
        DEMO_LOG_LEVEL='INFO',
        # explicit, so that a DEMO_DB_ENGINE of the caller's environment cannot interfere
        DEMO_DB_ENGINE='sqlite3',
    )
    if queue is not None:
        env['DEMO_QUEUE'] = queue
    if isinstance(database, PostgresDatabase):
        env.update(
            DEMO_DB_ENGINE='postgresql',
            DEMO_DB_NAME=database.name,
            DEMO_PG_HOST=PG_SERVER['host'],
            DEMO_PG_PORT=PG_SERVER['port'],
            DEMO_PG_USER=PG_SERVER['user'],
            DEMO_PG_PASSWORD=PG_SERVER['password'],
        )
    return env


@pytest.fixture(scope='session')
def demo_databases(tmp_path_factory, amqp_url, db_server):
    """Migrated master and replica databases, made once and copied for every service.

    SQLite: files in a template directory. PostgreSQL: template databases, dropped at the end.
    """
    data_dir = tmp_path_factory.mktemp('demo-template')
    databases = {}
    try:
        for kind, directory in (('master', MASTER_DIR), ('replica', REPLICA_DIR)):
            database = databases[kind] = new_database(
                DB_VENDOR, f'demo_{kind}_template', data_dir / f'{kind}.sqlite3'
            )
            env = demo_env(data_dir, amqp_url, 'cqrs_it_unused', 'cqrs_it_unused', database)
            run_process(
                [PYTHON, 'manage.py', 'migrate', '--noinput', '-v', '0'],
                what=f'migrate in {directory.name}',
                cwd=directory,
                env=env,
                timeout=COMMAND_TIMEOUT,
            )
        for database in databases.values():
            if database.vendor == 'sqlite':
                path = database.path
                assert path.exists(), path
                wal = Path(f'{path}-wal')
                assert not wal.exists() or not wal.stat().st_size
        yield databases
    finally:
        for database in databases.values():
            database.drop()


class Demo:
    """Factory of demo services sharing one test's exchange."""

    def __init__(self, tmp_path: Path, broker: Broker, databases: dict) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.databases = databases
        self.services: list[DemoService] = []

    def _service(self, name: str, kind: str, queue: str | None) -> DemoService:
        data_dir = self.tmp_path / name
        data_dir.mkdir()
        database = new_database(
            DB_VENDOR, f'demo_{name}', data_dir / f'{kind}.sqlite3', self.databases[kind]
        )
        service = DemoService(
            name,
            cwd=MASTER_DIR if kind == 'master' else REPLICA_DIR,
            command=[PYTHON, 'manage.py'],
            env=demo_env(data_dir, self.broker.url, self.broker.exchange, queue, database),
            database=database,
            log_path=self.tmp_path / f'{name}.log',
            broker=self.broker,
            queue=queue,
        )
        self.services.append(service)
        return service

    def master(self, name: str = 'master') -> DemoService:
        return self._service(name, 'master', None)

    def replica(self, name: str = 'replica') -> DemoService:
        return self._service(name, 'replica', self.broker.queue(name))

    def close(self) -> None:
        """Stop every service and drop its database."""
        for service in reversed(self.services):
            service.close()


@pytest.fixture
def demo(tmp_path, broker, demo_databases):
    """``demo.master()`` / ``demo.replica(name)``: demo services; all stopped at the end."""
    factory = Demo(tmp_path, broker, demo_databases)
    yield factory
    factory.close()


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


def seed_demo(master: DemoService, count: int = 5) -> dict:
    """One publisher, one author and ``count`` books created on the master (published)."""
    return master.shell(DEMO_SEED.replace('COUNT', str(count)))


BOOK_COLUMNS = 'id, author_id, title, price, cqrs_revision, cqrs_updated'


def books(service: DemoService) -> dict:
    """Books of a demo master or replica keyed by id (the columns both sides share)."""
    table = 'catalog_book' if service.queue is None else 'replica_book'
    return service.rows(table, BOOK_COLUMNS)


def wait_books_equal(master: DemoService, replica: DemoService, timeout: float = TIMEOUT) -> dict:
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
