"""Benchmark of django-cqrs publishing and consuming over a local RabbitMQ.

    python -m bench.run [--n 3000] [--consume-n 10000] [--database sqlite|postgresql]
                        [--url URL[;URL...] | --cluster] [--queue-type classic|quorum|both]

Starts what it needs (``scripts/services.sh up rabbitmq``, unless ``--url`` names the brokers),
uses SQLite files in a temporary directory and prints one JSON line with the figures. With
``--cluster`` it starts a local 3-node RabbitMQ cluster for the run (``tests.transport.cluster``)
and uses it as ``--url``; ``--queue-type both`` runs the bench once per queue type and then
prints the two JSON lines and a side-by-side table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup(tmp: Path, database: str, url: str | None, queue_type: str) -> dict[str, str]:
    services = ([] if url else ['rabbitmq']) + (['postgres'] if database == 'postgresql' else [])
    if services:
        subprocess.run([str(ROOT / 'scripts' / 'services.sh'), 'up', *services], check=True)
    suffix = uuid.uuid4().hex[:8]
    env = {
        'BENCH_EXCHANGE': f'cqrs_bench_{suffix}',
        'BENCH_QUEUE': f'bench_replica_{suffix}',
        'BENCH_DB_ENGINE': database,
        'BENCH_QUEUE_TYPE': queue_type,
        'DJANGO_SETTINGS_MODULE': 'bench.settings',
        'PYTHONPATH': str(ROOT),
    }
    if url:
        env['BENCH_AMQP_URL'] = url
    if database == 'postgresql':
        master_db, replica_db = f'cqrs_bench_m_{suffix}', f'cqrs_bench_r_{suffix}'
        _pg_admin([f'CREATE DATABASE {master_db}', f'CREATE DATABASE {replica_db}'])
    else:
        master_db, replica_db = str(tmp / 'master.sqlite3'), str(tmp / 'replica.sqlite3')
    os.environ.update(env, BENCH_DB=master_db)
    import django

    django.setup()
    from django.core.management import call_command

    call_command('migrate', run_syncdb=True, verbosity=0)
    replica_env = {**os.environ, **env, 'BENCH_DB': replica_db}
    subprocess.run(
        [sys.executable, '-m', 'django', 'migrate', '--run-syncdb', '-v', '0'],
        env=replica_env,
        cwd=ROOT,
        check=True,
    )
    return replica_env


def _pg_admin(statements: list[str]) -> None:
    import psycopg

    with psycopg.connect(
        'dbname=postgres user=cqrs password=cqrs host=127.0.0.1', autocommit=True
    ) as connection:
        for statement in statements:
            connection.execute(statement)


def _teardown(replica_env: dict[str, str]) -> None:
    if replica_env['BENCH_DB_ENGINE'] != 'postgresql':
        return
    from django.db import connections

    connections.close_all()
    _pg_admin(
        [
            f'DROP DATABASE IF EXISTS {name} WITH (FORCE)'
            for name in (os.environ['BENCH_DB'], replica_env['BENCH_DB'])
        ]
    )


class _ReplicaDB:
    """The replica's database, read directly (SQLite file or PostgreSQL database)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __enter__(self):
        if self.env['BENCH_DB_ENGINE'] == 'postgresql':
            import psycopg

            self.connection = psycopg.connect(
                f'dbname={self.env["BENCH_DB"]} user=cqrs password=cqrs host=127.0.0.1',
                autocommit=True,
            )
            self.mark = '%s'
        else:
            import sqlite3

            self.connection = sqlite3.connect(self.env['BENCH_DB'], timeout=30)
            self.connection.isolation_level = None
            self.mark = '?'
        return self

    def rows(self, sql: str, params: tuple = ()) -> list:
        return self.connection.execute(sql.replace('?', self.mark), params).fetchall()

    def __exit__(self, *exc: object) -> None:
        self.connection.close()


def _channel():
    """A connection of the bench's own to the first live broker of ``CQRS['url']`` (in
    failover order, as the transport connects)."""
    import pika

    from dj_cqrs.transport._lifecycle import connect_first_live
    from dj_cqrs.transport.rabbit_mq import all_connection_parameters, broker_location

    nodes = all_connection_parameters()
    _index, connection = connect_first_live(
        lambda index: pika.BlockingConnection(nodes[index]),
        [broker_location(params) for params in nodes],
        0,
        (pika.exceptions.AMQPError, OSError),
        who='bench',
    )
    return connection, connection.channel()


def _declare_and_purge() -> None:
    from dj_cqrs.conf import cqrs_settings
    from dj_cqrs.transport import RabbitMQTransport

    connection, channel = _channel()
    RabbitMQTransport.declare_replica_topology(channel)
    channel.queue_purge(cqrs_settings.queue)
    connection.close()


def _queue_state() -> tuple[int, int]:
    from dj_cqrs.conf import cqrs_settings

    connection, channel = _channel()
    method = channel.queue_declare(cqrs_settings.queue, passive=True).method
    connection.close()
    return method.message_count, method.consumer_count


def _replica_count(env: dict[str, str], min_id: int = 0, updated: bool = False) -> int:
    sql = 'SELECT COUNT(*) FROM benchapp_benchreplica WHERE id >= ?'
    with _ReplicaDB(env) as db:
        return db.rows(sql + (' AND value = -1' if updated else ''), (min_id,))[0][0]


def _clear_replica(env: dict[str, str]) -> None:
    with _ReplicaDB(env) as db:
        db.rows('DELETE FROM benchapp_benchreplica RETURNING id')


# ``--metrics``: the consumers are started with ``--metrics-port`` (Prometheus metrics on).
METRICS = {'on': False}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _start_consumer(replica_env: dict[str, str], workers: int) -> subprocess.Popen:
    metrics = ['--metrics-port', str(_free_port())] if METRICS['on'] else []
    process = subprocess.Popen(
        [sys.executable, '-m', 'django', 'cqrs_consume', '-w', str(workers), *metrics],
        env=replica_env,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while _queue_state()[1] < workers:
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError('the consumer did not start')
        time.sleep(0.01)
    return process


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(30)


def bench_autocommit(n: int) -> dict:
    from bench.benchapp.models import BenchMaster, BenchPlain
    from dj_cqrs.transport import RabbitMQTransport

    timings: dict[str, list[float]] = {'plain': [], 'cqrs': []}
    totals = {'plain': 0.0, 'cqrs': 0.0}
    BenchMaster.objects.create(name='warm-up')
    BenchPlain.objects.create(name='warm-up')
    for model, key in ((BenchPlain, 'plain'), (BenchMaster, 'cqrs')) * 2:
        start_all = time.perf_counter()
        for i in range(n // 2):
            start = time.perf_counter()
            model.objects.create(name=f'row {i}', value=i)
            timings[key].append(time.perf_counter() - start)
        totals[key] += time.perf_counter() - start_all
    RabbitMQTransport.flush()
    plain_median = statistics.median(timings['plain'])
    cqrs_median = statistics.median(timings['cqrs'])
    return {
        'autocommit_saves_per_s_plain': round(len(timings['plain']) / totals['plain']),
        'autocommit_saves_per_s_cqrs': round(len(timings['cqrs']) / totals['cqrs']),
        'autocommit_median_ms_plain': round(plain_median * 1000, 3),
        'autocommit_median_ms_cqrs': round(cqrs_median * 1000, 3),
        'autocommit_added_ms_median': round((cqrs_median - plain_median) * 1000, 3),
    }


def bench_transaction(n: int) -> dict:
    from django.db import transaction

    from bench.benchapp.models import BenchMaster
    from dj_cqrs.transport import RabbitMQTransport

    start = time.perf_counter()
    with transaction.atomic():
        for i in range(n):
            BenchMaster.objects.create(name=f'batch {i}', value=i)
    committed = time.perf_counter() - start
    RabbitMQTransport.flush()
    confirmed = time.perf_counter() - start
    return {
        'transaction_saves_per_s': round(n / committed),
        'transaction_saves_per_s_confirmed': round(n / confirmed),
    }


def bench_outbox(n: int) -> dict:
    """Autocommit and one-transaction publishing with the outbox off and on, same run."""
    from django.conf import settings
    from django.db import transaction
    from django.test import override_settings

    from bench.benchapp.models import BenchMaster
    from dj_cqrs import outbox
    from dj_cqrs.models import CQRSOutboxMessage
    from dj_cqrs.transport import RabbitMQTransport

    result = {}
    for enabled in (False, True, False, True):
        label = 'on' if enabled else 'off'
        master = {**settings.CQRS.get('master', {}), 'outbox': enabled}
        with override_settings(CQRS={**settings.CQRS, 'master': master}):
            start = time.perf_counter()
            for i in range(n // 2):
                BenchMaster.objects.create(name=f'outbox {label} {i}', value=i)
            autocommit = time.perf_counter() - start
            start = time.perf_counter()
            with transaction.atomic():
                for i in range(n // 2):
                    BenchMaster.objects.create(name=f'outbox batch {label} {i}', value=i)
            batch = time.perf_counter() - start
            RabbitMQTransport.flush()
            outbox.flush_published()
        for key, seconds in (('autocommit', autocommit), ('transaction', batch)):
            name = f'outbox_{label}_{key}_saves_per_s'
            result[name] = result.get(name, 0) + round((n // 2) / seconds / 2)
    for key in ('autocommit', 'transaction'):
        result[f'outbox_{key}_ratio'] = round(
            result[f'outbox_on_{key}_saves_per_s'] / result[f'outbox_off_{key}_saves_per_s'], 3
        )
    result['outbox_rows_left'] = CQRSOutboxMessage.objects.count()
    return result


def bench_consume(n: int, workers: int, replica_env: dict[str, str], updates: bool = False):
    """Publish n new rows with no consumer running, then time the consumer applying them.

    With ``updates``: the n rows are first applied, then each is updated once while the
    consumer is stopped; the consumer is timed applying the n updates.
    """
    from django.db import transaction

    from bench.benchapp.models import BenchMaster
    from dj_cqrs.transport import RabbitMQTransport

    _declare_and_purge()
    _clear_replica(replica_env)
    with transaction.atomic():
        rows = [BenchMaster.objects.create(name=f'consume {i}', value=i) for i in range(n)]
    first = rows[0].pk
    RabbitMQTransport.flush()
    if updates:
        process = _start_consumer(replica_env, workers)
        while _replica_count(replica_env, first) < n:
            time.sleep(0.01)
        _stop(process)
        with transaction.atomic():
            for row in rows:
                row.value = -1
                row.save()
        RabbitMQTransport.flush()
    while _queue_state()[0] < n:
        time.sleep(0.01)
    process = _start_consumer(replica_env, workers)
    start = time.perf_counter()
    if updates:
        while _replica_count(replica_env, first, updated=True) < n:
            time.sleep(0.005)
    else:
        while _replica_count(replica_env, first) < n:
            time.sleep(0.005)
    elapsed = time.perf_counter() - start
    _stop(process)
    return round(n / elapsed)


def bench_latency(replica_env: dict[str, str], count: int = 200, gap: float = 0.02) -> dict:
    from bench.benchapp.models import BenchMaster

    _declare_and_purge()
    process = _start_consumer(replica_env, 1)
    committed: dict[int, float] = {}
    seen: dict[int, float] = {}
    done = threading.Event()

    def poll() -> None:
        with _ReplicaDB(replica_env) as db:
            while not done.is_set():
                for (pk,) in db.rows(
                    'SELECT id FROM benchapp_benchreplica WHERE name LIKE ?', ('latency %',)
                ):
                    seen.setdefault(pk, time.perf_counter())
                time.sleep(0.0005)

    _clear_replica(replica_env)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    for i in range(count):
        obj = BenchMaster.objects.create(name=f'latency {i}', value=i)
        committed[obj.pk] = time.perf_counter()
        time.sleep(gap)
    deadline = time.monotonic() + 30
    while len(seen) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    poller.join()
    _stop(process)
    latencies = sorted((seen[pk] - committed[pk]) * 1000 for pk in committed if pk in seen)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return {
        'latency_p50_ms': round(statistics.median(latencies), 2),
        'latency_p99_ms': round(p99, 2),
        'latency_samples': len(latencies),
    }


# The figures shown side by side by ``--queue-type both``: (key, label).
COMPARED = (
    ('autocommit_saves_per_s_cqrs', 'autocommit CQRS saves/s'),
    ('transaction_saves_per_s', 'saves/s in one transaction (committed)'),
    ('transaction_saves_per_s_confirmed', 'saves/s in one transaction (confirmed)'),
    ('outbox_on_autocommit_saves_per_s', 'autocommit saves/s, outbox on'),
    ('consume_msgs_per_s_1_worker', 'consume -w 1, new rows (msg/s)'),
    ('consume_msgs_per_s_2_workers', 'consume -w 2, new rows (msg/s)'),
    ('consume_updates_msgs_per_s_1_worker', 'consume -w 1, updates (msg/s)'),
    ('latency_p50_ms', 'e2e latency p50 (ms)'),
    ('latency_p99_ms', 'e2e latency p99 (ms)'),
)


def compare_metrics(args: argparse.Namespace, replica_env: dict[str, str]) -> dict:
    """The consume measures with metrics off and on, alternated ``--rounds`` times."""
    measures = {
        'consume_msgs_per_s_1_worker': lambda: bench_consume(args.consume_n, 1, replica_env),
        'consume_msgs_per_s_2_workers': lambda: bench_consume(args.consume_n, 2, replica_env),
        'consume_updates_msgs_per_s_1_worker': lambda: bench_consume(
            args.consume_n, 1, replica_env, updates=True
        ),
    }
    runs: dict = {f'{key}_metrics_{state}': [] for key in measures for state in ('off', 'on')}
    for round_ in range(args.rounds):
        for key, measure in measures.items():
            states = ('off', 'on') if round_ % 2 == 0 else ('on', 'off')
            for state in states:
                METRICS['on'] = state == 'on'
                runs[f'{key}_metrics_{state}'].append(measure())
    METRICS['on'] = False
    result: dict = {'consume_n': args.consume_n, 'rounds': args.rounds, 'runs': runs}
    for key in measures:
        off = statistics.median(runs[f'{key}_metrics_off'])
        on = statistics.median(runs[f'{key}_metrics_on'])
        result[f'{key}_metrics_off'] = round(off)
        result[f'{key}_metrics_on'] = round(on)
        result[f'{key}_on_vs_off'] = round(on / off, 3)
    return result


def run_once(args: argparse.Namespace, url: str | None, queue_type: str) -> dict:
    with tempfile.TemporaryDirectory(prefix='cqrs-bench-') as tmp:
        replica_env = _setup(Path(tmp), args.database, url, queue_type)
        _declare_and_purge()
        METRICS['on'] = args.metrics == 'on'
        result: dict = {'n': args.n, 'database': args.database, 'broker': 'rabbitmq'}
        if url:
            result['nodes'] = len([item for item in url.split(';') if item.strip()])
        result['queue_type'] = queue_type
        if args.metrics == 'compare':
            result.update(compare_metrics(args, replica_env))
        else:
            _bench_all(args, replica_env, result)
        from dj_cqrs.conf import cqrs_settings

        connection, channel = _channel()
        channel.queue_delete(cqrs_settings.queue)
        channel.queue_delete(cqrs_settings.replica.dead_letter_queue)
        channel.exchange_delete(cqrs_settings.exchange)
        connection.close()
        _teardown(replica_env)
    return result


def _bench_all(args: argparse.Namespace, replica_env: dict[str, str], result: dict) -> None:
    result.update(bench_autocommit(args.n))
    _declare_and_purge()
    result.update(bench_transaction(args.n))
    _declare_and_purge()
    result.update(bench_outbox(args.n))
    result['consume_n'] = args.consume_n
    result['consume_msgs_per_s_1_worker'] = bench_consume(args.consume_n, 1, replica_env)
    result['consume_msgs_per_s_2_workers'] = bench_consume(args.consume_n, 2, replica_env)
    result['consume_updates_msgs_per_s_1_worker'] = bench_consume(
        args.consume_n, 1, replica_env, updates=True
    )
    result.update(bench_latency(replica_env))


def run_both(args: argparse.Namespace, url: str | None) -> list[dict]:
    """One run per queue type, each in a process of its own (a fresh Django and publisher)."""
    results = []
    for queue_type in ('classic', 'quorum'):
        command = [sys.executable, '-m', 'bench.run', '--n', str(args.n)]
        command += ['--consume-n', str(args.consume_n), '--database', args.database]
        command += ['--queue-type', queue_type] + (['--url', url] if url else [])
        output = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
    return results


def side_by_side(classic: dict, quorum: dict) -> str:
    lines = [f'{"measure":<42} {"classic":>10} {"quorum":>10} {"quorum/classic":>15}']
    for key, label in COMPARED:
        ratio = quorum[key] / classic[key] if classic[key] else float('nan')
        lines.append(f'{label:<42} {classic[key]:>10} {quorum[key]:>10} {ratio:>15.2f}')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--n', type=int, default=3000)
    parser.add_argument(
        '--consume-n', type=int, default=10000, help='messages of each consume measure'
    )
    parser.add_argument('--database', choices=['sqlite', 'postgresql'], default='sqlite')
    brokers = parser.add_mutually_exclusive_group()
    brokers.add_argument(
        '--url', help="CQRS['url']: one broker URL or several separated by ';' (a cluster)"
    )
    brokers.add_argument(
        '--cluster', action='store_true', help='start a local 3-node RabbitMQ cluster for the run'
    )
    parser.add_argument(
        '--queue-type',
        choices=['classic', 'quorum', 'both'],
        default='classic',
        help="CQRS['replica']['queue_type'] of the replica queue; 'both' compares the two",
    )
    parser.add_argument(
        '--metrics',
        choices=['off', 'on', 'compare'],
        default='off',
        help="consumers with --metrics-port ('on'); 'compare': only the consume measures, "
        'metrics off and on alternated --rounds times, medians and ratios',
    )
    parser.add_argument('--rounds', type=int, default=3, help='rounds of --metrics compare')
    args = parser.parse_args()
    cluster = None
    url = args.url
    if args.cluster:
        from tests.transport.cluster import RabbitCluster

        cluster = RabbitCluster(Path(tempfile.mkdtemp(prefix='cqrs-bench-cluster-'))).start()
        url = cluster.url
    try:
        if args.queue_type != 'both':
            print(json.dumps(run_once(args, url, args.queue_type)))
            return
        classic, quorum = run_both(args, url)
        print(json.dumps(classic))
        print(json.dumps(quorum))
        print(side_by_side(classic, quorum))
    finally:
        if cluster is not None:
            cluster.teardown()


if __name__ == '__main__':
    main()
