#!/usr/bin/env python
"""Run the django-cqrs demo: a master service replicating to a replica service over RabbitMQ.

    .venv/bin/python examples/demo_project/run_demo.py          scripted run, prints a report
    .venv/bin/python examples/demo_project/run_demo.py serve    web pages on :8000 and :8001

The scripted run starts from empty databases, migrates both services, starts the replica's
consumer (``cqrs_consume -w 2``), makes changes on the master (``manage.py demo_scenario``
and a filtered ``cqrs_sync``), waits until the replica has caught up, prints master and
replica rows side by side with the replica's JOIN query and the measured lag, then stops the
consumer and ends with the ``manage.py cqrs_status`` tables of the replica and the master
(taken while the consumer ran). Exit status 0 when the replica matches the master, 1 otherwise.

Environment: DEMO_DATA_DIR (default examples/demo_project/.data), DEMO_AMQP_URL,
DEMO_EXCHANGE, DEMO_QUEUE (see the services' settings). Needs RabbitMQ (from the repository
root: ``scripts/services.sh up rabbitmq``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pika
from pika.exceptions import AMQPError, ChannelClosedByBroker

HERE = Path(__file__).resolve().parent
MASTER_DIR = HERE / 'master_service'
REPLICA_DIR = HERE / 'replica_service'
DATA_DIR = Path(os.environ.get('DEMO_DATA_DIR') or HERE / '.data').resolve()
AMQP_URL = os.environ.get('DEMO_AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672/%2F')
EXCHANGE = os.environ.get('DEMO_EXCHANGE', 'cqrs_demo')
QUEUE = os.environ.get('DEMO_QUEUE', 'cqrs_demo_replica')
MASTER_DB = DATA_DIR / 'master.sqlite3'
REPLICA_DB = DATA_DIR / 'replica.sqlite3'
MASTER_LOG = DATA_DIR / 'master.log'
CONSUMER_LOG = DATA_DIR / 'consumer.log'

WORKERS = 2
READY_TIMEOUT = 30
CATCH_UP_TIMEOUT = 60
SYNC_FILTER = '{"price__gt": 20}'

# (master table, replica table) per CQRS_ID
TABLES = {
    'demo.publisher': ('catalog_publisher', 'replica_publisher'),
    'demo.author': ('catalog_author', 'replica_author'),
    'demo.book': ('catalog_book', 'replica_book'),
}


class DemoError(Exception):
    """A failure to report in one clear message (exit status 1)."""


def child_env() -> dict:
    env = dict(os.environ, DEMO_DATA_DIR=str(DATA_DIR), PYTHONUNBUFFERED='1')
    env.pop('DJANGO_SETTINGS_MODULE', None)  # each manage.py picks its own settings
    return env


def manage(service_dir: Path, *args: str, log: Path | None = None, echo=None) -> str:
    """Run ``manage.py args`` in a service; return its stdout, raise DemoError on failure.

    stderr is appended to ``log`` (when given); ``echo`` is called with each stdout line as
    it arrives.
    """
    with log.open('a+') if log is not None else tempfile.TemporaryFile('w+') as errors:
        start = errors.seek(0, os.SEEK_END)
        lines = []
        with subprocess.Popen(
            [sys.executable, 'manage.py', *args],
            cwd=service_dir,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        ) as process:
            for line in process.stdout:
                lines.append(line)
                if echo is not None:
                    echo(line.rstrip('\n'))
        if process.returncode != 0:
            errors.seek(start)
            output = (errors.read() or ''.join(lines)).strip().splitlines()[-15:]
            raise DemoError(
                f'{service_dir.name}: manage.py {" ".join(args)} failed '
                f'(exit {process.returncode}):\n' + '\n'.join(f'    {line}' for line in output)
            )
    return ''.join(lines)


def spawn(service_dir: Path, *args: str, output=None) -> subprocess.Popen:
    """Start ``manage.py args`` in its own process group (so Ctrl-C reaches only us)."""
    return subprocess.Popen(
        [sys.executable, 'manage.py', *args],
        cwd=service_dir,
        env=child_env(),
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        text=True,
        start_new_session=True,
    )


def stop(process: subprocess.Popen, timeout: float = 20) -> int | None:
    """SIGTERM a child we started and wait; SIGKILL its process group if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


# --- broker --------------------------------------------------------------------------------


def connect() -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except AMQPError as exc:
        raise DemoError(
            f'RabbitMQ is not reachable at {AMQP_URL} ({type(exc).__name__}). Start it from the '
            'repository root with: scripts/services.sh up rabbitmq'
        ) from None


def queue_state(connection: pika.BlockingConnection, name: str) -> tuple[int, int] | None:
    """(messages, consumers) of a queue, None when it does not exist."""
    channel = connection.channel()
    try:
        frame = channel.queue_declare(name, passive=True)
    except ChannelClosedByBroker:
        return None
    channel.close()
    return frame.method.message_count, frame.method.consumer_count


def purge_queues(connection: pika.BlockingConnection) -> None:
    """Drop messages left over from earlier runs: the databases start empty."""
    state = queue_state(connection, QUEUE)
    if state and state[1]:
        raise DemoError(
            f'queue {QUEUE} already has {state[1]} consumer(s): stop the other cqrs_consume '
            '(e.g. a running "run_demo.py serve") or set DEMO_QUEUE to another name.'
        )
    for name in (QUEUE, f'dead_letter_{QUEUE}'):
        if queue_state(connection, name) is not None:
            channel = connection.channel()
            channel.queue_purge(name)
            channel.close()


def wait_consumer_ready(connection: pika.BlockingConnection, consumer: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if consumer.poll() is not None:
            raise DemoError(f'cqrs_consume exited with {consumer.returncode}; see {CONSUMER_LOG}')
        state = queue_state(connection, QUEUE)
        if state and state[1] >= WORKERS:
            return
        time.sleep(0.1)
    raise DemoError(f'cqrs_consume did not start {WORKERS} consumers in {READY_TIMEOUT} s')


# --- databases -----------------------------------------------------------------------------


def read_rows(db: Path, query: str) -> list[dict]:
    connection = sqlite3.connect(db, timeout=30)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute(query)]
    finally:
        connection.close()


def timestamp(value: str) -> float:
    """Unix time of a datetime Django stored in SQLite (naive UTC with USE_TZ = True)."""
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc).timestamp()


def snapshot() -> dict:
    """All master and replica rows, keyed by CQRS_ID then id."""
    state = {}
    for cqrs_id, (master_table, replica_table) in TABLES.items():
        master = read_rows(MASTER_DB, f'SELECT * FROM {master_table}')
        replica = read_rows(REPLICA_DB, f'SELECT * FROM {replica_table}')
        state[cqrs_id] = (
            {row['id']: row for row in master},
            {row['id']: row for row in replica},
        )
    return state


def differences(state: dict, synced_ids=(), synced_after: float = 0.0) -> list[str]:
    """What still differs: rows missing, extra or at another revision; SYNCs not applied."""
    problems = []
    for cqrs_id, (master, replica) in state.items():
        missing = sorted(set(master) - set(replica))
        extra = sorted(set(replica) - set(master))
        behind = sorted(
            pk
            for pk in set(master) & set(replica)
            if master[pk]['cqrs_revision'] != replica[pk]['cqrs_revision']
        )
        for label, pks in (('missing', missing), ('not deleted', extra), ('stale', behind)):
            if pks:
                problems.append(f'{cqrs_id}: {label} on the replica: {pks}')
    books = state['demo.book'][1]
    unsynced = sorted(
        pk
        for pk in synced_ids
        if pk not in books or timestamp(books[pk]['replicated_at']) < synced_after
    )
    if unsynced:
        problems.append(f'demo.book: SYNC not applied yet: {unsynced}')
    return problems


def wait_caught_up(consumer: subprocess.Popen, synced_ids=(), synced_after: float = 0.0):
    deadline = time.monotonic() + CATCH_UP_TIMEOUT
    while True:
        state = snapshot()
        problems = differences(state, synced_ids, synced_after)
        if not problems:
            return state
        if consumer.poll() is not None:
            raise DemoError(f'cqrs_consume exited with {consumer.returncode}; see {CONSUMER_LOG}')
        if time.monotonic() > deadline:
            raise DemoError(
                f'the replica did not catch up within {CATCH_UP_TIMEOUT} s:\n'
                + '\n'.join(f'    {problem}' for problem in problems)
                + f'\n    consumer log: {CONSUMER_LOG}'
            )
        time.sleep(0.02)


def lag_figures(state: dict, last_commit: float) -> tuple[float, list[float]]:
    """(seconds from the last master commit to the replica's last write, per-row lags).

    A row's lag is the time between the master's save (``cqrs_updated``, sent with the
    message) and the consumer's write of that revision (``replicated_at``).
    """
    written, per_row = [], []
    for _, replica in state.values():
        for row in replica.values():
            replicated_at = timestamp(row['replicated_at'])
            written.append(replicated_at)
            per_row.append(replicated_at - timestamp(row['cqrs_updated']))
    return max(max(written) - last_commit, 0.0), per_row


# --- output --------------------------------------------------------------------------------


def render(headers: list[str], rows: list[list], right: set[int]) -> list[str]:
    """Lines of a plain-text table; columns in ``right`` are right-aligned."""
    cells = [[('' if value is None else str(value)) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]

    def line(values):
        return '  '.join(
            value.rjust(width) if index in right else value.ljust(width)
            for index, (value, width) in enumerate(zip(values, widths, strict=True))
        )

    return [line(headers), *(line(row) for row in cells)]


def side_by_side(title: str, left: list[str], right: list[str]) -> None:
    width = max(len(line) for line in left)
    print(f'\n{title}')
    print(f'  {"MASTER".ljust(width)} | REPLICA')
    for index, (a, b) in enumerate(zip(left, right, strict=True)):
        print(f'  {a.ljust(width)} | {b}'.rstrip())
        if index == 0:
            print(f'  {"-" * width}-+-{"-" * len(b)}')


def money(value) -> str:
    return '' if value is None else f'{float(value):.2f}'


def paired(master: dict, replica: dict, extra_ids=()) -> list[int]:
    return sorted(set(master) | set(replica) | set(extra_ids))


def print_tables(state: dict, deleted_books: list[int]) -> None:
    master, replica = state['demo.publisher']
    ids = paired(master, replica)
    left = [
        [pk, master[pk]['name'], master[pk]['country'], master[pk]['cqrs_revision']] for pk in ids
    ]
    right = [
        [pk, replica[pk]['publisher_name'], replica[pk]['country'], replica[pk]['cqrs_revision']]
        for pk in ids
    ]
    side_by_side(
        'Publishers (replica: CQRS_MAPPING name -> publisher_name)',
        render(['id', 'name', 'country', 'rev'], left, {0, 3}),
        render(['id', 'publisher_name', 'country', 'rev'], right, {0, 3}),
    )

    master, replica = state['demo.author']
    ids = paired(master, replica)
    columns = ['id', 'name', 'publisher_id', 'cqrs_revision']
    headers = ['id', 'name', 'publisher_id', 'rev']
    side_by_side(
        'Authors (master: DRF serializer nesting the publisher; replica: custom serialization '
        'keeps its id)',
        render(headers, [[master[pk][c] for c in columns] for pk in ids], {0, 2, 3}),
        render(headers, [[replica[pk][c] for c in columns] for pk in ids], {0, 2, 3}),
    )

    master, replica = state['demo.book']
    left, right = [], []
    for pk in paired(master, replica, deleted_books):
        m, r = master.get(pk), replica.get(pk)
        left.append(
            [pk, m['title'], money(m['price']), m['cqrs_revision']]
            if m
            else [pk, '(deleted)', '', '']
        )
        right.append(
            [pk, r['title'], money(r['price']), r['cqrs_revision'], money(r['previous_price'])]
            if r
            else ['', '(absent)', '', '', '']
        )
    side_by_side(
        'Books (tracked fields title, price; replica keeps previous_price from previous_data)',
        render(['id', 'title', 'price', 'rev'], left, {0, 2, 3}),
        render(['id', 'title', 'price', 'rev', 'previous_price'], right, {0, 2, 3, 4}),
    )


def print_report(report: dict) -> None:
    print('\nReplica JOIN query: books - authors - publishers, all local to the replica')
    rows = [
        [b['publisher_name'], b['author_name'], b['title'], money(b['price'])]
        for b in report['books']
    ]
    for line in render(['publisher', 'author', 'title', 'price'], rows, {3}):
        print(f'  {line}')
    print('\nTotal price per publisher (JOIN + GROUP BY on the replica)')
    rows = [[t['publisher_name'], t['books'], money(t['total'])] for t in report['totals']]
    for line in render(['publisher', 'books', 'total'], rows, {1, 2}):
        print(f'  {line}')


def log_counts(path: Path, pattern: str) -> Counter:
    if not path.exists():
        return Counter()
    return Counter(re.findall(pattern, path.read_text()))


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def ms(seconds: float) -> str:
    return f'{seconds * 1000:.0f} ms'


# --- modes ---------------------------------------------------------------------------------


def fresh_data_dir() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name in ('master.sqlite3', 'replica.sqlite3'):
        for suffix in ('', '-wal', '-shm', '-journal'):
            (DATA_DIR / f'{name}{suffix}').unlink(missing_ok=True)
    for log in (MASTER_LOG, CONSUMER_LOG):
        log.unlink(missing_ok=True)


def migrate() -> None:
    manage(MASTER_DIR, 'migrate', '--noinput')
    manage(REPLICA_DIR, 'migrate', '--noinput')


def echo_step(line: str) -> None:
    if not line.startswith('{'):
        print(f'    {line.strip()}', flush=True)


STATUS_PATH = '/admin/dj_cqrs/status/'


def status_tables() -> list[tuple[str, str]]:
    """``manage.py cqrs_status`` of the replica and the master: (title, table) pairs."""
    return [
        (name, manage(directory, 'cqrs_status').rstrip())
        for name, directory in (('replica', REPLICA_DIR), ('master', MASTER_DIR))
    ]


def step(number: int, text: str) -> None:
    print(f'[{number}/6] {text}', flush=True)


def run() -> int:
    print(f'django-cqrs demo: master -> RabbitMQ exchange {EXCHANGE!r} -> replica queue {QUEUE!r}')
    connection = connect()
    fresh_data_dir()
    print(f'data: {display_path(DATA_DIR)}/ (recreated)')
    purge_queues(connection)

    started = time.monotonic()
    migrate()
    step(1, f'migrated master and replica databases ({time.monotonic() - started:.1f} s)')

    started = time.monotonic()
    with CONSUMER_LOG.open('w') as log:
        consumer = spawn(REPLICA_DIR, 'cqrs_consume', '-w', str(WORKERS), output=log)
    try:
        wait_consumer_ready(connection, consumer)
        step(
            2,
            f'replica consumer ready: cqrs_consume -w {WORKERS}, {WORKERS} consumers on the '
            f'queue ({time.monotonic() - started:.1f} s)',
        )

        step(3, 'scenario on the master (manage.py demo_scenario, steps 0.5 s apart):')
        output = manage(MASTER_DIR, 'demo_scenario', log=MASTER_LOG, echo=echo_step)
        summary = json.loads(output.strip().splitlines()[-1])

        state = wait_caught_up(consumer)
        lag, per_row = lag_figures(state, summary['last_commit'])
        step(4, f'replica caught up {ms(lag)} after the last master commit')

        synced_ids = [
            row['id']
            for row in read_rows(MASTER_DB, 'SELECT id FROM catalog_book WHERE price > 20')
        ]
        sync_started = time.time()
        manage(MASTER_DIR, 'cqrs_sync', '--cqrs-id', 'demo.book', '-f', SYNC_FILTER, log=MASTER_LOG)
        state = wait_caught_up(consumer, synced_ids, sync_started)
        step(
            5,
            f"cqrs_sync --cqrs-id demo.book -f '{SYNC_FILTER}': "
            f'{len(synced_ids)} SYNC messages, all applied',
        )

        report = json.loads(manage(REPLICA_DIR, 'demo_report'))
        step(6, 'master and replica match (same rows, same revisions)')
        statuses = status_tables()
    finally:
        stopped_with = stop(consumer)
        connection.close()

    print_tables(state, summary.get('deleted_books', []))
    print_report(report)

    # The log lines are django-cqrs's: 'CQRS is published: pk = 1 (demo.book), ...'.
    published = log_counts(MASTER_LOG, r'CQRS is published: pk = .*? \((\S+)\), correlation_id')
    received = log_counts(CONSUMER_LOG, r'CQRS is received: pk = .*? \((\S+)\), correlation_id')
    problems = log_counts(CONSUMER_LOG, r' (WARNING|ERROR) ')
    print('\nReplication')
    print(
        f'  messages: master published {sum(published.values())} '
        f'({", ".join(f"{k} {v}" for k, v in sorted(published.items()))}), '
        f'replica received {sum(received.values())}'
    )
    print(f'  lag: last master commit -> replica caught up: {ms(lag)}')
    print(
        f'  lag per row (master save -> replica write, {len(per_row)} rows): '
        f'p50 {ms(statistics.median(per_row))}, max {ms(max(per_row))}'
    )
    print(
        f'  consumer: stopped with SIGTERM (exit {stopped_with}); {sum(problems.values())} '
        f'warnings/errors in {display_path(CONSUMER_LOG)}'
    )
    for name, table in statuses:
        print(f'\nmanage.py cqrs_status on the {name} (while the consumer ran)')
        for line in table.splitlines():
            print(f'  {line}'.rstrip())
    print(
        '\nThe same figures, with a chart of the lag on the replica, are on the admin status '
        'page: run_demo.py serve, then http://127.0.0.1:8000' + STATUS_PATH + ' (master) and '
        'http://127.0.0.1:8001' + STATUS_PATH + ' (replica), user admin / admin'
    )
    return 0


def pump(process: subprocess.Popen, prefix: str) -> None:
    for line in process.stdout:
        print(f'{prefix} {line}', end='', flush=True)


def create_admin(directory: Path) -> bool:
    """Create the superuser admin / admin in a service; False when it already exists."""
    env_user = {'DJANGO_SUPERUSER_USERNAME': 'admin', 'DJANGO_SUPERUSER_PASSWORD': 'admin'}
    return (
        subprocess.run(
            [sys.executable, 'manage.py', 'createsuperuser', '--noinput', '--email', 'a@x.org'],
            cwd=directory,
            env={**child_env(), **env_user},
            capture_output=True,
            text=True,
        ).returncode
        == 0
    )


def serve(args: argparse.Namespace) -> int:
    connect().close()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    migrate()
    created = [create_admin(directory) for directory in (MASTER_DIR, REPLICA_DIR)]
    children = {
        'consumer': spawn(REPLICA_DIR, 'cqrs_consume', '-w', str(WORKERS), output=subprocess.PIPE)
    }
    try:
        threading.Thread(
            target=pump, args=(children['consumer'], '[consumer]'), daemon=True
        ).start()
        connection = connect()
        wait_consumer_ready(connection, children['consumer'])
        connection.close()
        if not read_rows(MASTER_DB, 'SELECT id FROM catalog_publisher LIMIT 1'):
            print('[demo] empty master database: running demo_scenario to seed it', flush=True)
            manage(MASTER_DIR, 'demo_scenario', '--pause', '0', log=MASTER_LOG)
        for name, directory, port in (
            ('master', MASTER_DIR, args.master_port),
            ('replica', REPLICA_DIR, args.replica_port),
        ):
            address = f'{args.host}:{port}'
            children[name] = spawn(
                directory, 'runserver', '--noreload', address, output=subprocess.PIPE
            )
            threading.Thread(target=pump, args=(children[name], f'[{name}]'), daemon=True).start()
        print(f'[demo] master:  http://{args.host}:{args.master_port}/', flush=True)
        print(
            f'[demo] admin:   http://{args.host}:{args.master_port}/admin/ (admin / admin'
            f'{"" if all(created) else ", created on an earlier run"})',
            flush=True,
        )
        print(f'[demo] replica: http://{args.host}:{args.replica_port}/', flush=True)
        for name, port in (('master', args.master_port), ('replica', args.replica_port)):
            print(
                f'[demo] {name} replication status: http://{args.host}:{port}{STATUS_PATH}',
                flush=True,
            )
        print('[demo] Ctrl-C stops everything', flush=True)
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.3)
        dead = [name for name, child in children.items() if child.poll() is not None]
        raise DemoError(f'{", ".join(dead)} exited; stopping the others')
    except KeyboardInterrupt:
        print('\n[demo] stopping', flush=True)
        return 0
    finally:
        for child in reversed(list(children.values())):
            stop(child)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('mode', nargs='?', choices=['run', 'serve'], default='run')
    parser.add_argument('--host', default='127.0.0.1', help='serve: address to bind')
    parser.add_argument('--master-port', type=int, default=8000)
    parser.add_argument('--replica-port', type=int, default=8001)
    args = parser.parse_args()
    # Ctrl-C and SIGTERM both end up in the ``finally`` blocks that stop the children (even
    # when started from a shell that ignores SIGINT for background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return serve(args) if args.mode == 'serve' else run()
    except DemoError as exc:
        print(f'run_demo: error: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('\nrun_demo: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
