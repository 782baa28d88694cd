"""Shared fixtures of the multi-service integration tests.

Every test runs real services as separate processes: a master service and one or more replica
services, each with its own settings, its own database and its own environment, talking
through the RabbitMQ broker on ``CQRS_TEST_AMQP_URL`` (default ``127.0.0.1:5672``) under an
exchange and queues of their own (deleted afterwards). Tests look at the results in the
services' databases (``Service.query`` / ``Service.execute``), never in logs.

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

The broker (``broker``: this test's exchange and queues, ``tests.harness.Broker``) and the
helpers (``wait_for``, ``stop_process``, ...) are those of ``tests/``: the root ``conftest.py``
and ``tests.harness``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from itertools import count
from pathlib import Path

import psycopg
import pytest
from psycopg import sql as pg_sql
from psycopg.rows import dict_row

from tests.harness import (
    PG_SERVER,
    ROOT,
    TIMEOUT,
    Broker,
    assert_succeeded,
    base_env,
    pg_admin,
    pg_connect,
    shell_command,
    stop_process,
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


def last_json_line(output: str):
    """The JSON document on the last non-empty line of a command's stdout."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, 'the command printed nothing'
    return json.loads(lines[-1])


# --- databases ---------------------------------------------------------------------------------


class SqliteDatabase:
    """A service's SQLite file. SQL for ``query`` / ``execute`` uses ``?`` placeholders."""

    vendor = 'sqlite'

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f'<SQLite {self.path}>'

    def query(self, sql: str, params=()) -> list[dict]:
        connection = sqlite3.connect(self.path, timeout=30)
        connection.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in connection.execute(sql, params)]
        finally:
            connection.close()

    def execute(self, sql: str, params=()) -> int:
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            with connection:
                return connection.execute(sql, params).rowcount
        finally:
            connection.close()

    def drop(self) -> None:
        """Nothing to do: the file is in the test's temporary directory."""


class PostgresDatabase:
    """A service's PostgreSQL database, read and changed in autocommit mode.

    SQL for ``query`` / ``execute`` uses ``?`` placeholders, as with SQLite.
    """

    vendor = 'postgresql'

    def __init__(self, name: str) -> None:
        self.name = name
        self._connection: psycopg.Connection | None = None

    def __repr__(self) -> str:
        return f'<PostgreSQL database {self.name}>'

    def _cursor(self):
        if self._connection is None or self._connection.closed:
            self._connection = pg_connect(self.name)
        return self._connection.cursor(row_factory=dict_row)

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace('%', '%%').replace('?', '%s')

    def query(self, sql: str, params=()) -> list[dict]:
        with self._cursor() as cursor:
            cursor.execute(self._sql(sql), tuple(params))
            return cursor.fetchall()

    def execute(self, sql: str, params=()) -> int:
        with self._cursor() as cursor:
            cursor.execute(self._sql(sql), tuple(params))
            return cursor.rowcount

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def drop(self) -> None:
        """Close our connection and drop the database, ending any session still on it."""
        self.close()
        pg_admin(
            pg_sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(
                pg_sql.Identifier(self.name)
            )
        )


# Database names: unique to this pytest run (and to each database made in it).
_PG_RUN = uuid.uuid4().hex[:8]
_PG_NUMBERS = count(1)


def new_database(label: str, path: Path, template=None):
    """A new, empty database of the vendor, or a copy of ``template`` (made by this function).

    SQLite: the file ``path``. PostgreSQL: ``CREATE DATABASE`` with a unique name; ``drop()``
    it when done.
    """
    if DB_VENDOR == 'sqlite':
        if template is not None:
            shutil.copyfile(template.path, path)
        return SqliteDatabase(path)
    slug = ''.join(char if char.isalnum() else '_' for char in label.lower())[:30]
    name = f'cqrs_it_{_PG_RUN}_{next(_PG_NUMBERS)}_{slug}'
    statement = pg_sql.SQL('CREATE DATABASE {}').format(pg_sql.Identifier(name))
    if template is not None:
        statement += pg_sql.SQL(' TEMPLATE {}').format(pg_sql.Identifier(template.name))
    pg_admin(statement)
    return PostgresDatabase(name)


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


class Service:
    """One Django service: a working directory, a command prefix, an environment, a database.

    ``manage()`` runs a management command to completion; ``spawn()`` starts a long-running
    one (its output goes to ``<name>.log``); ``stop()`` ends every process it spawned.
    ``query()`` / ``execute()`` read and change its database (SQL with ``?`` placeholders).
    """

    def __init__(
        self,
        name: str,
        *,
        cwd: Path,
        command: list[str],
        env: dict[str, str],
        database: SqliteDatabase | PostgresDatabase,
        log_dir: Path,
        broker: Broker,
        queue: str | None = None,
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.command = command
        self.env = env
        self.database = database
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
        if check:
            assert_succeeded(result, f'{self.name}: {" ".join(args)[:200]}')
        return result

    def shell(self, code: str):
        """Run Python code with ``manage.py shell -c``; the JSON on its last stdout line."""
        return last_json_line(self.manage('shell', '-c', code).stdout)

    def shell_command(self, *args: str) -> str:
        """A shell fragment running ``manage.py args`` in this service (``shell_command``)."""
        return shell_command(self, *args)

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
        return self.database.query(sql, params)

    def execute(self, sql: str, params: tuple = ()) -> int:
        """Change the database behind the service's back; returns the rows changed."""
        return self.database.execute(sql, params)

    def rows(self, table: str, columns: str = '*') -> dict:
        """Rows of a table keyed by id."""
        return {row['id']: row for row in self.query(f'SELECT {columns} FROM {table}')}


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
                f'demo_{kind}_template', data_dir / f'{kind}.sqlite3'
            )
            env = demo_env(data_dir, amqp_url, 'cqrs_it_unused', 'cqrs_it_unused', database)
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
        self.services: list[Service] = []

    def _service(self, name: str, kind: str, queue: str | None) -> Service:
        data_dir = self.tmp_path / name
        data_dir.mkdir()
        database = new_database(
            f'demo_{name}', data_dir / f'{kind}.sqlite3', template=self.databases[kind]
        )
        service = Service(
            name,
            cwd=MASTER_DIR if kind == 'master' else REPLICA_DIR,
            command=[PYTHON, 'manage.py'],
            env=demo_env(data_dir, self.broker.url, self.broker.exchange, queue, database),
            database=database,
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
        """Stop every service, then drop their databases."""
        try:
            for service in reversed(self.services):
                service.stop()
        finally:
            for service in self.services:
                service.database.drop()


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
