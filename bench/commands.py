"""Benchmark of the management utilities: cqrs_sync, cqrs_bulk_dump, cqrs_bulk_load.

    python -m bench.commands [--sizes 20000 200000]

Starts what it needs (``scripts/services.sh up rabbitmq``), runs each command as its own
process on SQLite files in a temporary directory and prints one JSON line: rows/s per command
and size (command wall time less the start-up of a command that does nothing), the peak
memory (max RSS) of each dump, and the dump's rate in process (``call_command`` in a warm
process, median of several rounds: the read and serialization alone).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(db: Path, names: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        'DJANGO_SETTINGS_MODULE': 'bench.settings',
        'PYTHONPATH': str(ROOT),
        'BENCH_DB': str(db),
        **names,
    }


def _manage(env: dict[str, str], *args: str, stdout=subprocess.DEVNULL) -> tuple[float, int]:
    """Run a management command; return (seconds, max RSS in KiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, '-m', 'django', *args], env=env, cwd=ROOT, stdout=stdout
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f'{args[0]} failed with {process.returncode}')
    return elapsed, usage.ru_maxrss


_IN_PROCESS_DUMP = """
import io, statistics, sys, time
import django
django.setup()
from django.core.management import call_command
path, rounds = sys.argv[1], int(sys.argv[2])
times = []
for _ in range(rounds + 1):
    start = time.perf_counter()
    call_command('cqrs_bulk_dump', '-c', 'bench', '-o', path, '-f', stderr=io.StringIO())
    times.append(time.perf_counter() - start)
print(statistics.median(times[1:]))
"""


def _dump_in_process(env: dict[str, str], path: Path, rounds: int = 5) -> float:
    """Median seconds of ``cqrs_bulk_dump`` called in a process that already dumped once."""
    done = subprocess.run(
        [sys.executable, '-c', _IN_PROCESS_DUMP, str(path), str(rounds)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def _fill_master(db: Path, rows: int) -> None:
    connection = sqlite3.connect(db)
    connection.execute('DELETE FROM benchapp_benchmaster')
    connection.executemany(
        'INSERT INTO benchapp_benchmaster (id, name, value, cqrs_revision, cqrs_updated) '
        "VALUES (?, ?, ?, 0, '2026-01-01 00:00:00')",
        ((i, f'row {i}', i) for i in range(1, rows + 1)),
    )
    connection.commit()
    connection.close()


def _startup_seconds(env: dict[str, str]) -> float:
    """Time of a management command that does nothing: subtracted from every measure."""
    return min(_manage(env, 'check', '-v', '0')[0] for _ in range(3))


def _queue_admin(env: dict[str, str], action: str) -> None:
    code = (
        'import pika, django; django.setup()\n'
        'from dj_cqrs.conf import cqrs_settings as s\n'
        'from dj_cqrs.transport import RabbitMQTransport\n'
        'from dj_cqrs.transport.rabbit_mq import connection_parameters\n'
        'c = pika.BlockingConnection(connection_parameters()); ch = c.channel()\n'
        'RabbitMQTransport.declare_replica_topology(ch)\n'
        + (
            'ch.queue_purge(s.queue)\n'
            if action == 'purge'
            else 'ch.queue_delete(s.queue); ch.queue_delete(s.replica.dead_letter_queue); '
            'ch.exchange_delete(s.exchange)\n'
        )
        + 'c.close()\n'
    )
    subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--sizes', type=int, nargs='+', default=[20000, 200000])
    args = parser.parse_args()
    subprocess.run([str(ROOT / 'scripts' / 'services.sh'), 'up', 'rabbitmq'], check=True)
    suffix = uuid.uuid4().hex[:8]
    names = {'BENCH_EXCHANGE': f'cqrs_bench_{suffix}', 'BENCH_QUEUE': f'bench_cmd_{suffix}'}
    result: dict = {'database': 'sqlite', 'broker': 'rabbitmq'}
    with tempfile.TemporaryDirectory(prefix='cqrs-bench-commands-') as tmp:
        master = _env(Path(tmp) / 'master.sqlite3', names)
        replica = _env(Path(tmp) / 'replica.sqlite3', names)
        for env in (master, replica):
            _manage(env, 'migrate', '--run-syncdb', '-v', '0')
        startup = _startup_seconds(master)
        result['command_startup_s'] = round(startup, 3)
        for rows in args.sizes:
            _fill_master(Path(master['BENCH_DB']), rows)
            _queue_admin(master, 'purge')
            seconds, _ = _manage(master, 'cqrs_sync', '--cqrs-id', 'bench', '-f', '{}')
            result[f'sync_rows_per_s_{rows}'] = round(rows / max(seconds - startup, 1e-6))
            _queue_admin(master, 'purge')
            dump = Path(tmp) / f'bench-{rows}.dump'
            seconds, rss = _manage(master, 'cqrs_bulk_dump', '--cqrs-id', 'bench', '-o', str(dump))
            result[f'dump_rows_per_s_{rows}'] = round(rows / max(seconds - startup, 1e-6))
            result[f'dump_peak_rss_mib_{rows}'] = round(rss / 1024, 1)
            seconds = _dump_in_process(master, Path(tmp) / f'bench-{rows}-in-process.dump')
            result[f'dump_in_process_rows_per_s_{rows}'] = round(rows / seconds)
            seconds, _ = _manage(replica, 'cqrs_bulk_load', '-i', str(dump), '-c')
            result[f'load_rows_per_s_{rows}'] = round(rows / max(seconds - startup, 1e-6))
        if len(args.sizes) >= 2:
            small, large = args.sizes[0], args.sizes[-1]
            result['dump_peak_rss_ratio'] = round(
                result[f'dump_peak_rss_mib_{large}'] / result[f'dump_peak_rss_mib_{small}'], 3
            )
        _queue_admin(master, 'delete')
    print(json.dumps(result))


if __name__ == '__main__':
    main()
