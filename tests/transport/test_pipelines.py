"""The piped management commands between two services with separate databases (SPEC §7).

A "master service" and a "replica service" are both processes of ``tests.settings_broker``
with a SQLite file of their own, sharing this test's RabbitMQ exchange; only the replica runs
``cqrs_consume``. The commands run as real shell pipelines (``a | b | c``), each stage with
the environment of the service it belongs to.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.harness import (
    ROOT,
    bodies_before_marker,
    pipeline,
    replica_names,
    shell_command,
    wait_for,
)

MASTER_TABLE = 'dj_master_simplestmodel'
REPLICA_TABLE = 'dj_replica_simplestreplica'

# Run in the master service: 20 rows, some updated once or twice (revisions 0, 1, 2).
CREATE_ROWS = """
from tests.dj_master.models import SimplestModel
for pk in range(1, 21):
    SimplestModel.objects.create(id=pk, name=f'row {pk}')
for pk in (3, 4, 5, 6, 12):
    row = SimplestModel.objects.get(id=pk)
    row.name = f'row {pk} v2'
    row.save()
for pk in (5, 12):
    row = SimplestModel.objects.get(id=pk)
    row.name = f'row {pk} v3'
    row.save()
"""


def popen_pipeline(tmp_path, *stages: tuple) -> list[tuple[int, str]]:
    """Connect ``(service, args...)`` stages with OS pipes; ``[(returncode, stderr), ...]``."""
    processes = []
    errors = []
    previous = None
    for index, (service, *args) in enumerate(stages):
        error = (tmp_path / f'stage-{index}.err').open('w+')
        errors.append(error)
        process = subprocess.Popen(
            [sys.executable, '-m', 'django', *args],
            env=service.env,
            cwd=ROOT,
            stdin=previous.stdout if previous else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=error,
            text=True,
        )
        if previous is not None:
            previous.stdout.close()  # only the next stage holds the read end
        processes.append(process)
        previous = process
    processes[-1].communicate(timeout=180)
    results = []
    for process, error in zip(processes, errors, strict=True):
        process.wait(timeout=180)
        error.seek(0)
        results.append((process.returncode, error.read()))
        error.close()
    return results


def full_rows(service, table: str) -> list[tuple]:
    return sorted(service.query(f'SELECT id, name, cqrs_revision, cqrs_updated FROM {table}'))


def body_pks(stdout: str) -> tuple[str, list]:
    """Header line and the pks of the JSON body lines of a diff stream."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    pks = []
    for line in lines[1:]:
        pks.extend(json.loads(line))
    return lines[0], pks


def assert_one_line_error(stderr: str) -> None:
    assert 'Traceback' not in stderr, stderr
    assert stderr.strip(), 'a failing command says why'


@pytest.fixture
def services(replica_service):
    """(master service, replica service); the replica consumes, the master only publishes."""
    master = replica_service()
    replica = replica_service().start('-w', '1')
    replica.wait_ready()
    return master, replica


def populate(master, replica=None) -> list[tuple]:
    result = master.manage('shell', '-c', CREATE_ROWS, check=False)
    assert result.returncode == 0, result.stderr
    expected = replica_names(master, MASTER_TABLE)
    assert len(expected) == 20
    if replica is not None:
        wait_for(
            lambda: replica_names(replica, REPLICA_TABLE) == expected,
            message=f'the replica applying the SAVEs ({replica.log()[-2000:]})',
        )
    return expected


# --------------------------------------------------------------------------------------------
# cqrs_diff_master | cqrs_diff_replica | cqrs_diff_sync


def test_diff_pipeline_repairs_a_broken_replica(services, names):
    master, replica = services
    expected = populate(master, replica)
    assert {revision for _, _, revision in expected} == {0, 1, 2}

    replica.execute(f'DELETE FROM {REPLICA_TABLE} WHERE id IN (1, 2, 10)')
    replica.execute(
        f"UPDATE {REPLICA_TABLE} SET cqrs_revision = 0, name = 'stale' WHERE id IN (3, 4, 12)",
    )
    replica.execute(
        f"UPDATE {REPLICA_TABLE} SET cqrs_revision = 9, name = 'ahead' WHERE id = 11",
    )
    # Same revision, different name: not a revision difference, the diff leaves it alone.
    replica.execute(f"UPDATE {REPLICA_TABLE} SET name = 'same rev' WHERE id = 20")
    assert replica_names(replica, REPLICA_TABLE) != expected

    # The first two stages alone: what the replica reports as different.
    diff = pipeline(
        shell_command(master, 'cqrs_diff_master', '--cqrs-id', 'simplest', '-b', '7'),
        shell_command(replica, 'cqrs_diff_replica'),
    )
    assert diff.returncode == 0, diff.stderr
    header, pks = body_pks(diff.stdout)
    cqrs_id, _now, queue = header.split(',')
    assert (cqrs_id, queue) == ('simplest', names['queue'])
    assert sorted(pks) == [1, 2, 3, 4, 10, 11, 12]

    result = pipeline(
        shell_command(master, 'cqrs_diff_master', '--cqrs-id', 'simplest', '-b', '7'),
        shell_command(replica, 'cqrs_diff_replica'),
        shell_command(master, 'cqrs_diff_sync', '-b', '2'),
    )

    assert result.returncode == 0, result.stderr
    # cqrs_diff_sync: one cqrs_sync summary per line of pks (batches 1-7 and 8-14).
    assert result.stdout == (
        'Done!\n4 instance(s) synced.\n4 instance(s) processed.\n'
        'Done!\n3 instance(s) synced.\n3 instance(s) processed.\n'
    )
    repaired = [row if row[0] != 20 else (20, 'same rev', row[2]) for row in expected]
    wait_for(
        lambda: replica_names(replica, REPLICA_TABLE) == repaired,
        message=f'the replica applying the SYNCs ({replica.log()[-2000:]})',
    )
    # The master table itself was only read.
    assert replica_names(master, MASTER_TABLE) == expected


def test_diff_pipeline_with_a_filter_repairs_only_matching_rows(services):
    master, replica = services
    expected = populate(master, replica)
    replica.execute(f'DELETE FROM {REPLICA_TABLE} WHERE id IN (2, 15)')

    result = pipeline(
        shell_command(master, 'cqrs_diff_master', '--cqrs-id', 'simplest', '-f', '{"id__lte": 10}'),
        shell_command(replica, 'cqrs_diff_replica'),
        shell_command(master, 'cqrs_diff_sync'),
    )

    assert result.returncode == 0, result.stderr
    want = [row for row in expected if row[0] != 15]
    wait_for(
        lambda: replica_names(replica, REPLICA_TABLE) == want,
        message=f'row 2 synced ({replica.log()[-2000:]})',
    )


def test_diff_pipeline_on_an_identical_replica_publishes_nothing(services, names, broker):
    master, replica = services
    expected = populate(master, replica)
    capture = broker.capture()

    diff = pipeline(
        shell_command(master, 'cqrs_diff_master', '--cqrs-id', 'simplest'),
        shell_command(replica, 'cqrs_diff_replica'),
    )
    assert diff.returncode == 0, diff.stderr
    assert body_pks(diff.stdout)[1] == []

    result = pipeline(
        shell_command(master, 'cqrs_diff_master', '--cqrs-id', 'simplest'),
        shell_command(replica, 'cqrs_diff_replica'),
        shell_command(master, 'cqrs_diff_sync'),
    )
    assert result.returncode == 0, result.stderr
    # cqrs_diff_sync has exited, so whatever it published is in the capture queue.
    assert bodies_before_marker(broker.channel, names['exchange'], capture) == []
    assert replica_names(replica, REPLICA_TABLE) == expected


@pytest.mark.parametrize('pipefail', [True, False], ids=['pipefail', 'no-pipefail'])
def test_diff_pipeline_whose_first_command_fails_exits_non_zero(replica_service, pipefail):
    master = replica_service()
    replica = replica_service()

    result = pipeline(
        shell_command(master, 'cqrs_diff_master', '--cqrs-id', 'nope'),
        shell_command(replica, 'cqrs_diff_replica'),
        shell_command(master, 'cqrs_diff_sync'),
        pipefail=pipefail,
    )

    assert result.returncode != 0, result.stderr
    assert result.stdout == ''
    assert 'nope' in result.stderr
    assert 'Traceback' not in result.stderr, result.stderr


def test_diff_pipeline_failure_every_stage_reports(replica_service, tmp_path):
    master = replica_service()
    replica = replica_service()

    (first, first_err), (second, second_err), (last, last_err) = popen_pipeline(
        tmp_path,
        (master, 'cqrs_diff_master', '--cqrs-id', 'nope'),
        (replica, 'cqrs_diff_replica'),
        (master, 'cqrs_diff_sync'),
    )

    assert first != 0
    assert 'nope' in first_err
    assert second != 0
    assert last != 0
    for stderr in (first_err, second_err, last_err):
        assert_one_line_error(stderr)


# --------------------------------------------------------------------------------------------
# cqrs_deleted_diff_replica | cqrs_deleted_diff_master | cqrs_deleted_sync_replica


def test_deleted_pipeline_removes_rows_deleted_on_the_master(services):
    master, replica = services
    expected = populate(master, replica)
    master.execute(f'DELETE FROM {MASTER_TABLE} WHERE id IN (2, 5, 17)')
    remaining = [row for row in expected if row[0] not in (2, 5, 17)]
    assert replica_names(master, MASTER_TABLE) == remaining

    diff = pipeline(
        shell_command(replica, 'cqrs_deleted_diff_replica', '--cqrs-id', 'simplest', '-b', '4'),
        shell_command(master, 'cqrs_deleted_diff_master'),
    )
    assert diff.returncode == 0, diff.stderr
    header, pks = body_pks(diff.stdout)
    assert header.split(',')[0] == 'simplest'
    assert sorted(pks) == [2, 5, 17]

    result = pipeline(
        shell_command(replica, 'cqrs_deleted_diff_replica', '--cqrs-id', 'simplest', '-b', '4'),
        shell_command(master, 'cqrs_deleted_diff_master'),
        shell_command(replica, 'cqrs_deleted_sync_replica'),
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == ''
    assert replica_names(replica, REPLICA_TABLE) == remaining
    assert replica_names(master, MASTER_TABLE) == remaining


def test_deleted_pipeline_with_nothing_deleted_keeps_every_row(services):
    master, replica = services
    expected = populate(master, replica)

    result = pipeline(
        shell_command(replica, 'cqrs_deleted_diff_replica', '--cqrs-id', 'simplest'),
        shell_command(master, 'cqrs_deleted_diff_master'),
        shell_command(replica, 'cqrs_deleted_sync_replica'),
    )

    assert result.returncode == 0, result.stderr
    assert replica_names(replica, REPLICA_TABLE) == expected


@pytest.mark.parametrize('pipefail', [True, False], ids=['pipefail', 'no-pipefail'])
def test_deleted_pipeline_whose_first_command_fails_deletes_nothing(
    replica_service, tmp_path, pipefail
):
    master = replica_service()
    replica = replica_service()
    populate(master)
    before_load = pipeline(
        shell_command(master, 'cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', '-'),
        shell_command(replica, 'cqrs_bulk_load', '-i', '-'),
    )
    assert before_load.returncode == 0, before_load.stderr
    master.execute(f'DELETE FROM {MASTER_TABLE} WHERE id IN (1, 2)')
    before = replica_names(replica, REPLICA_TABLE)
    assert len(before) == 20

    result = pipeline(
        shell_command(replica, 'cqrs_deleted_diff_replica', '--cqrs-id', 'nope'),
        shell_command(master, 'cqrs_deleted_diff_master'),
        shell_command(replica, 'cqrs_deleted_sync_replica'),
        pipefail=pipefail,
    )

    assert result.returncode != 0, result.stderr
    assert 'nope' in result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    assert replica_names(replica, REPLICA_TABLE) == before


def test_deleted_pipeline_failure_every_stage_reports(replica_service, tmp_path):
    master = replica_service()
    replica = replica_service()

    results = popen_pipeline(
        tmp_path,
        (replica, 'cqrs_deleted_diff_replica', '--cqrs-id', 'nope'),
        (master, 'cqrs_deleted_diff_master'),
        (replica, 'cqrs_deleted_sync_replica'),
    )

    assert [code != 0 for code, _ in results] == [True, True, True]
    assert 'nope' in results[0][1]
    for _, stderr in results:
        assert_one_line_error(stderr)


# --------------------------------------------------------------------------------------------
# cqrs_bulk_dump | cqrs_bulk_load


def test_bulk_dump_piped_into_bulk_load(replica_service):
    master = replica_service()
    replica = replica_service()
    populate(master)
    assert replica.count() == 0

    result = pipeline(
        shell_command(master, 'cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', '-', '-b', '6'),
        shell_command(replica, 'cqrs_bulk_load', '-i', '-', '-b', '4'),
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == ''
    assert full_rows(replica, REPLICA_TABLE) == full_rows(master, MASTER_TABLE)


def test_bulk_dump_piped_into_bulk_load_with_clear(replica_service):
    master = replica_service()
    replica = replica_service()
    populate(master)
    replica.execute(
        f'INSERT INTO {REPLICA_TABLE} (id, name, cqrs_revision, cqrs_updated) '
        "VALUES (500, 'orphan', 0, '2020-01-01 00:00:00')",
    )

    result = pipeline(
        shell_command(master, 'cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', '-'),
        shell_command(replica, 'cqrs_bulk_load', '-c', '-i', '-'),
    )

    assert result.returncode == 0, result.stderr
    assert full_rows(replica, REPLICA_TABLE) == full_rows(master, MASTER_TABLE)


def test_bulk_dump_and_load_through_a_file(replica_service, tmp_path):
    master = replica_service()
    replica = replica_service()
    populate(master)
    path = tmp_path / 'simplest.dump'

    dumped = master.manage('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', str(path), check=False)
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout == ''
    assert path.read_text(encoding='utf-8').splitlines()[0] == 'simplest'

    loaded = replica.manage('cqrs_bulk_load', '-i', str(path), check=False)
    assert loaded.returncode == 0, loaded.stderr

    assert full_rows(replica, REPLICA_TABLE) == full_rows(master, MASTER_TABLE)


def test_bulk_dump_refuses_to_overwrite_in_a_subprocess(replica_service, tmp_path):
    master = replica_service()
    path = tmp_path / 'simplest.dump'
    path.write_text('precious\n')

    result = master.manage('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', str(path), check=False)

    assert result.returncode != 0
    assert_one_line_error(result.stderr)
    assert path.read_text() == 'precious\n'


@pytest.mark.parametrize('pipefail', [True, False], ids=['pipefail', 'no-pipefail'])
def test_bulk_pipe_whose_dump_fails_loads_nothing(replica_service, pipefail):
    master = replica_service()
    replica = replica_service()
    populate(master)
    replica.execute(
        f'INSERT INTO {REPLICA_TABLE} (id, name, cqrs_revision, cqrs_updated) '
        "VALUES (500, 'kept', 0, '2020-01-01 00:00:00')",
    )

    result = pipeline(
        shell_command(master, 'cqrs_bulk_dump', '--cqrs-id', 'nope', '-o', '-'),
        shell_command(replica, 'cqrs_bulk_load', '-c', '-i', '-'),
        pipefail=pipefail,
    )

    assert result.returncode != 0
    assert 'nope' in result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    assert replica_names(replica, REPLICA_TABLE) == [(500, 'kept', 0)]
