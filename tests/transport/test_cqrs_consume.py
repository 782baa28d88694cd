"""``manage.py cqrs_consume`` against RabbitMQ: CQRS_ID filters, workers, signals, reload.

The command runs in a subprocess (a replica service with a SQLite database of its own); the
tests look at its worker processes through ``/proc`` and at the replica's database.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pika
import pytest
from django.core.management import call_command
from pika import exceptions as pika_exceptions

from tests.dj_master.models import FlakyModel, SimplestModel
from tests.harness import ROOT, wait_for

FLAKY = 'dj_replica_flakyreplica'
FLAKY_ATTEMPT = 'dj_replica_flakyattempt'
READY = 'CQRS consumer is ready'


def _state(pid: int) -> str | None:
    """The process state letter from ``/proc/<pid>/stat`` (None when there is no process)."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(')', 1)[1].split()[0]


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, 'Z', 'X')


def _children(pid: int) -> set[int]:
    """Live (non-zombie) child processes of ``pid``."""
    children = set()
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / 'stat').read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(')', 1)[1].split()
        if int(fields[1]) == pid and fields[0] not in ('Z', 'X'):
            children.add(int(entry.name))
    return children


def _ready_pids(log: str) -> list[int]:
    """Pids of the workers that logged readiness, in log order (format: time pid level msg)."""
    return [int(m.group(1)) for m in re.finditer(rf'^\S+ \S+ (\d+) \w+ {READY}', log, re.M)]


def _workers(process: subprocess.Popen, count: int) -> set[int]:
    return wait_for(
        lambda: (lambda c: c if len(c) == count else None)(_children(process.pid)),
        message=f'{count} worker processes of {process.pid}',
    )


def _save_lands(replica, pk: int) -> None:
    SimplestModel.objects.create(id=pk, name=f'row {pk}')
    wait_for(
        lambda: replica.query('SELECT name FROM dj_replica_simplestreplica WHERE id = ?', (pk,)),
        message=f'replica row {pk} ({replica.log()[-2000:]})',
    )


def _routable(amqp_url: str, exchange: str, routing_key: str) -> bool:
    """Whether the exchange routes ``routing_key`` to any queue (mandatory publish)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        try:
            channel.basic_publish(
                exchange, routing_key, b'not json', pika.BasicProperties(), mandatory=True
            )
        except pika_exceptions.UnroutableError:
            return False
        return True
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_cqrs_id_option_binds_only_those_models(master, replica_service, names, amqp_url):
    replica = replica_service().start('-w', '1', '--cqrs-id', 'simplest')
    replica.wait_ready()
    master()

    FlakyModel.objects.create(id=1, name='not consumed')
    _save_lands(replica, 1)  # published after the flaky row, on the same channel

    assert replica.count(FLAKY) == 0
    assert replica.count(FLAKY_ATTEMPT) == 0
    queue, dead = names['queue'], names['dead_letter_queue']
    assert not _routable(amqp_url, names['exchange'], 'flaky')
    assert not _routable(amqp_url, names['exchange'], f'cqrs.{queue}.flaky')
    assert _routable(amqp_url, names['exchange'], f'cqrs.{dead}.simplest')
    # Dead letters of any CQRS_ID are kept (the catch-all binding of the dead-letter queue).
    assert _routable(amqp_url, names['exchange'], f'cqrs.{dead}.flaky')


def test_item_25_unknown_cqrs_id_and_bad_worker_count_are_errors(replica_service):
    replica = replica_service()

    result = replica.manage('cqrs_consume', '--cqrs-id', 'simplest', 'nope', check=False)
    assert result.returncode != 0
    assert result.stderr.endswith('CommandError: Wrong CQRS ID: nope!\n')
    assert 'Traceback' not in result.stderr

    for workers in ('0', '-1'):
        result = replica.manage('cqrs_consume', '-w', workers, check=False)
        assert result.returncode != 0
        assert '--workers must be at least 1' in result.stderr
        assert 'Traceback' not in result.stderr


@pytest.mark.django_db(transaction=True)
def test_two_workers_and_a_killed_worker_is_restarted(master, replica_service):
    replica = replica_service().start('-w', '2')
    replica.wait_ready(2)
    workers = _workers(replica.process, 2)
    assert set(_ready_pids(replica.log())) == workers
    master()
    _save_lands(replica, 1)

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    restarted = wait_for(
        lambda: (lambda c: c if len(c) == 2 and victim not in c else None)(
            _children(replica.process.pid)
        ),
        message='a replacement worker',
    )
    assert restarted - workers and max(workers) in restarted
    replica.wait_ready(3)
    assert set(_ready_pids(replica.log())[2:]) == restarted - workers
    assert 'exited with code -9; starting it again' in replica.log()

    _save_lands(replica, 2)
    assert replica.process.poll() is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_stop_signal_stops_supervisor_and_workers(master, replica_service, signum):
    replica = replica_service().start('-w', '2', '--sigint-timeout', '10')
    replica.wait_ready(2)
    workers = _workers(replica.process, 2)
    master()
    _save_lands(replica, 1)

    replica.process.send_signal(signum)
    assert replica.process.wait(60) == 0
    wait_for(lambda: not any(_alive(pid) for pid in workers), message='workers gone')
    assert 'did not stop; killing it' not in replica.log()


@pytest.mark.django_db(transaction=True)
def test_sighup_restarts_the_workers(master, replica_service):
    replica = replica_service().start('-w', '2')
    replica.wait_ready(2)
    workers = _workers(replica.process, 2)

    replica.process.send_signal(signal.SIGHUP)
    replica.wait_ready(4)
    new_workers = _workers(replica.process, 2)
    assert not new_workers & workers
    assert not any(_alive(pid) for pid in workers)
    assert 'reloading 2 workers' in replica.log()

    master()
    _save_lands(replica, 1)
    assert replica.process.poll() is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize('relative', [False, True], ids=['absolute-ignore', 'relative-ignore'])
def test_reload_on_python_file_change(master, replica_service, tmp_path, relative):
    workdir = tmp_path / 'project'
    ignored = workdir / 'ignored'
    ignored.mkdir(parents=True)
    replica = replica_service()
    log = replica.log_path.open('a')
    process = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'django',
            'cqrs_consume',
            '-w',
            '1',
            '--reload',
            '--ignore-paths',
            'ignored' if relative else str(ignored),
        ],
        env=replica.env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    replica.process = process  # stopped by the fixture
    replica.wait_ready(1)
    [worker] = _workers(process, 1)

    # A .py change under the ignored directory and a non-Python file change, then a watched
    # .py change. File events arrive in order, so once x.py is reported the two earlier
    # changes were seen too: had either caused a reload it would be reported first (or, in
    # the same batch, instead: the reported path is the first in sorted order).
    (ignored / 'skipped.py').write_text('X = 1\n')
    (workdir / 'notes.txt').write_text('not python\n')
    (workdir / 'x.py').write_text('X = 1\n')
    wait_for(
        lambda: re.search(r'CQRS consumer: \S+ changed, reloading', replica.log()),
        message='the reload',
    )
    replica.wait_ready(2)
    [new_worker] = _workers(process, 1)
    assert new_worker != worker
    reloads = re.findall(r'CQRS consumer: (\S+) changed, reloading', replica.log())
    assert [Path(path).name for path in reloads] == ['x.py'], replica.log()[-2000:]

    master()
    _save_lands(replica, 1)


def test_options_reach_the_supervisor(mocker):
    supervisor = mocker.patch('dj_cqrs.management.commands.cqrs_consume.Supervisor')
    call_command(
        'cqrs_consume',
        '-w',
        '3',
        '--cqrs-id',
        'simplest',
        'flaky',
        '--reload',
        '--ignore-paths',
        'a, b,,',
        '--sigint-timeout',
        '0.5',
        '--sigkill-timeout',
        '2',
    )
    supervisor.assert_called_once_with(
        3,
        cqrs_ids=['simplest', 'flaky'],
        watch=True,
        ignore_paths=[str(Path('a').resolve()), str(Path('b').resolve())],
        sigint_timeout=0.5,
        sigkill_timeout=2.0,
        metrics_port=None,
        metrics_host='',
    )
    supervisor.return_value.run.assert_called_once_with()


SUPERVISED = textwrap.dedent(
    """
    import os, signal, sys, time

    import django

    django.setup()
    from dj_cqrs.management._supervisor import Supervisor


    def stubborn(cqrs_ids):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('worker', os.getpid(), flush=True)
        while True:
            time.sleep(1)


    Supervisor(1, sigint_timeout=float(sys.argv[1]), sigkill_timeout=5, target=stubborn).run()
    print('supervisor done', flush=True)
    """
)


def test_worker_ignoring_sigint_is_killed_after_the_timeout(tmp_path):
    script = tmp_path / 'supervised.py'
    script.write_text(SUPERVISED)
    env = {**os.environ, 'DJANGO_SETTINGS_MODULE': 'tests.settings', 'PYTHONPATH': str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(script), '0.5'],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith('worker '), process.stderr.read()
        worker = int(line.split()[1])
        assert _alive(worker)
        wait_for(lambda: _children(process.pid) == {worker}, message='the stubborn worker')

        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    try:
        assert process.returncode == 0, stderr
        assert 'supervisor done' in stdout
        wait_for(lambda: not _alive(worker), message='the stubborn worker killed')
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
