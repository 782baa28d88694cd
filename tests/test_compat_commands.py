"""Items 21-25, 27 and 29 (``batch_qs``) of issue 9: the management commands take the options
of django-cqrs and print what it prints, byte for byte where scripts read it.

The expected texts, option tables and dump bytes were taken from django-cqrs 3.1.0 run on the
same models.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import pytest
from django.core.management import call_command, load_command_class
from django.db import DatabaseError, connection
from django.db.models import QuerySet
from django.test.utils import CaptureQueriesContext

from dj_cqrs.management.utils import batch_qs
from dj_cqrs.transport.loopback import LoopbackTransport
from tests.dj_master.models import SimplestModel
from tests.dj_replica.models import SimplestReplica
from tests.harness import command_error, run_command

pytestmark = pytest.mark.django_db(transaction=True)

UPDATED = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)


@pytest.fixture
def intercepted(monkeypatch):
    """Payloads handed to the transport, not applied to the replica tables."""
    payloads = []
    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(payloads.append))
    return payloads


def make_rows(*names: str) -> None:
    for pk, name in enumerate(names, start=1):
        SimplestModel.objects.create(id=pk, name=name)
    SimplestModel.objects.update(cqrs_updated=UPDATED)


# --- options: names, short flags, defaults, required-ness, types ----------------------------


def options_of(name: str) -> dict[str, tuple]:
    parser = load_command_class('dj_cqrs', name).create_parser('manage.py', name)
    return {
        action.dest: (tuple(action.option_strings), action.default, action.required)
        for action in parser._actions
        if action.option_strings and action.dest not in COMMON_OPTIONS
    }


COMMON_OPTIONS = {
    'help',
    'version',
    'verbosity',
    'settings',
    'pythonpath',
    'traceback',
    'no_color',
    'force_color',
    'skip_checks',
}
CQRS_ID = (('--cqrs-id', '-cid'), None, True)
FILTER = (('--filter', '-f'), None, False)
BATCH = (('--batch', '-b'), 10000, False)
PROGRESS = (('--progress', '-p'), False, False)

# django-cqrs 3.1.0's options; ours may only add options (no required ones).
ORIGINAL_OPTIONS = {
    'cqrs_sync': {
        'cqrs_id': CQRS_ID,
        'filter': FILTER,
        'queue': (('--queue', '-q'), None, False),
        'batch': BATCH,
        'progress': PROGRESS,
    },
    'cqrs_bulk_dump': {
        'cqrs_id': (('--cqrs-id', '-c'), None, True),
        'output': (('--output', '-o'), None, False),
        'batch': BATCH,
        'progress': PROGRESS,
        'force': (('--force', '-f'), False, False),
    },
    'cqrs_bulk_load': {
        'input': (('--input', '-i'), None, True),
        'clear': (('--clear', '-c'), False, False),
        'batch': BATCH,
    },
    'cqrs_diff_master': {'cqrs_id': CQRS_ID, 'filter': FILTER, 'batch': BATCH},
    'cqrs_deleted_diff_replica': {'cqrs_id': CQRS_ID, 'filter': FILTER, 'batch': BATCH},
    'cqrs_diff_sync': {'batch': BATCH, 'progress': PROGRESS},
    'cqrs_diff_replica': {},
    'cqrs_deleted_diff_master': {},
    'cqrs_deleted_sync_replica': {},
    'cqrs_consume': {
        'workers': (('--workers', '-w'), 1, False),
        'cqrs_id': (('--cqrs-id', '-cid'), None, False),
        'reload': (('--reload', '-r'), False, False),
        'ignore_paths': (('--ignore-paths',), '', False),
        'sigint_timeout': (('--sigint-timeout',), 5, False),
        'sigkill_timeout': (('--sigkill-timeout',), 1, False),
    },
}


@pytest.mark.parametrize('name', sorted(ORIGINAL_OPTIONS))
def test_items_21_to_27_options_are_those_of_django_cqrs(name):
    ours = options_of(name)

    for dest, expected in ORIGINAL_OPTIONS[name].items():
        assert ours[dest] == expected, dest
    for dest in set(ours) - set(ORIGINAL_OPTIONS[name]):
        assert not ours[dest][2], f'{name}: extra option {dest} must not be required'


def test_item_21_module_constants():
    from dj_cqrs.management.commands.cqrs_sync import DEFAULT_BATCH, DEFAULT_PROGRESS

    assert (DEFAULT_BATCH, DEFAULT_PROGRESS) == (10000, False)


@pytest.mark.parametrize(
    ('args', 'workers', 'cqrs_ids', 'sigint', 'sigkill', 'ignore'),
    [
        ([], 1, None, 5, 1, []),
        (['-w', '3', '-cid', 'simplest', 'auto_fields'], 3, ['simplest', 'auto_fields'], 5, 1, []),
        (['--sigint-timeout', '--sigkill-timeout', '--ignore-paths'], 1, None, 5, 1, []),
        (
            ['--sigint-timeout', '7', '--ignore-paths', 'env,node_modules'],
            1,
            None,
            7,
            1,
            ['env', 'node_modules'],
        ),
    ],
)
def test_item_27_consume_accepts_the_original_option_forms(
    args, workers, cqrs_ids, sigint, sigkill, ignore
):
    with mock.patch('dj_cqrs.management.commands.cqrs_consume.Supervisor') as supervisor:
        call_command('cqrs_consume', *args)

    (given_workers,), kwargs = supervisor.call_args
    assert given_workers == workers
    assert kwargs['cqrs_ids'] == cqrs_ids
    assert (kwargs['sigint_timeout'], kwargs['sigkill_timeout']) == (sigint, sigkill)
    assert kwargs['ignore_paths'] == [str(Path(path).resolve()) for path in ignore]
    supervisor.return_value.run.assert_called_once_with()


# --- item 25: unknown CQRS_ID and bad filters, every command -------------------------------

HEADER = '2024-01-02 03:04:05.000006+00:00'


@pytest.mark.parametrize(
    ('name', 'args', 'stdin'),
    [
        ('cqrs_sync', ['-cid', 'nope', '-f', '{}'], None),
        ('cqrs_bulk_dump', ['-c', 'nope'], None),
        ('cqrs_bulk_load', ['-i', '-'], 'nope\n'),
        ('cqrs_diff_master', ['-cid', 'nope'], None),
        ('cqrs_deleted_diff_replica', ['-cid', 'nope'], None),
        ('cqrs_diff_replica', [], f'nope,{HEADER}\n[[1,0]]\n'),
        ('cqrs_diff_sync', [], f'nope,{HEADER},replica\n[1]\n'),
        ('cqrs_deleted_diff_master', [], f'nope,{HEADER}\n[1]\n'),
        ('cqrs_deleted_sync_replica', [], f'nope,{HEADER}\n[1]\n'),
        ('cqrs_consume', ['-cid', 'nope'], None),
    ],
)
def test_item_25_unknown_cqrs_id(name, args, stdin):
    assert command_error(name, *args, stdin=stdin) == 'Wrong CQRS ID: nope!'


@pytest.mark.parametrize('name', ['cqrs_sync', 'cqrs_diff_master', 'cqrs_deleted_diff_replica'])
@pytest.mark.parametrize(
    ('value', 'message'),
    [
        ('{"id": ', 'Bad filter kwargs!'),
        ('[1]', 'Bad filter kwargs!'),
        ('"id"', 'Bad filter kwargs!'),
        (
            '{"nope": 1}',
            "Bad filter kwargs! Cannot resolve keyword 'nope' into field. "
            'Choices are: cqrs_revision, cqrs_updated, id, name',
        ),
    ],
)
def test_item_25_bad_filter(name, value, message):
    assert command_error(name, '-cid', 'simplest', '-f', value) == message


# --- item 21: cqrs_sync ---------------------------------------------------------------------


def test_item_21_sync_runs_an_overridden_cqrs_sync_per_row(produced, monkeypatch):
    make_rows('one', 'two', 'three')
    produced.clear()
    calls = []
    original = SimplestModel.cqrs_sync

    def cqrs_sync(self, using=None, queue=None):
        calls.append((self.pk, queue))
        if self.pk == 2:
            raise ValueError('boom')
        return original(self, using=using, queue=queue)

    monkeypatch.setattr(SimplestModel, 'cqrs_sync', cqrs_sync)

    out, err = run_command('cqrs_sync', '-cid', 'simplest', '-f', '{}', '-q', 'replica')

    assert calls == [(1, 'replica'), (2, 'replica'), (3, 'replica')]
    assert out == (
        '\nSync record failed for pk=2: ValueError: boom\n'
        'Done!\n2 instance(s) synced.\n3 instance(s) processed.\n'
    )
    assert err == ''
    assert [(p.pk, p.queue) for p in produced] == [(1, 'replica'), (3, 'replica')]


def test_item_21_sync_default_path_reads_each_row_once(intercepted):
    make_rows('one', 'two', 'three', 'four', 'five')
    intercepted.clear()

    with CaptureQueriesContext(connection) as queries:
        out, _ = run_command('cqrs_sync', '-cid', 'simplest', '-f', '{}', '-b', '2')

    selects = [q['sql'] for q in queries.captured_queries if q['sql'].startswith('SELECT')]
    # two counts (the total and batch_qs's), then 3 pages: no query per row
    assert len(selects) == 5
    assert out.endswith('Done!\n5 instance(s) synced.\n5 instance(s) processed.\n')
    assert [p.pk for p in intercepted] == [1, 2, 3, 4, 5]


def test_item_21_sync_serialization_error_is_a_failed_row(produced, monkeypatch):
    make_rows('one', 'two')
    produced.clear()
    original = SimplestModel.to_cqrs_dict

    def to_cqrs_dict(self, *args, **kwargs):
        if self.pk == 1:
            raise TypeError('not serializable')
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SimplestModel, 'to_cqrs_dict', to_cqrs_dict)

    out, _ = run_command('cqrs_sync', '-cid', 'simplest', '-f', '{}')

    assert out == (
        '\nSync record failed for pk=1: TypeError: not serializable\n'
        'Done!\n1 instance(s) synced.\n2 instance(s) processed.\n'
    )
    assert [p.pk for p in produced] == [2]


def test_item_21_sync_reopens_an_unusable_connection_between_batches(intercepted, monkeypatch):
    make_rows('one', 'two', 'three')
    usable = iter([True, False, True])
    monkeypatch.setattr(connection, 'is_usable', lambda: next(usable))
    closed = mock.Mock()
    monkeypatch.setattr(connection, 'close', closed)

    out, _ = run_command('cqrs_sync', '-cid', 'simplest', '-f', '{}', '-b', '1')

    assert closed.call_count == 1  # before the second batch only
    assert out == 'Done!\n3 instance(s) synced.\n3 instance(s) processed.\n'


# --- item 22: cqrs_bulk_dump ----------------------------------------------------------------

DUMP = (
    'simplest\n'
    '{"cqrs_revision":0,"cqrs_updated":"2024-01-02 03:04:05.000006+00:00","id":1,'
    '"name":"a\\/b \\u00fc \\u20ac \\"q\\" \\ud83d\\ude00"}\n'
    '{"cqrs_revision":0,"cqrs_updated":"2024-01-02 03:04:05.000006+00:00","id":2,'
    '"name":"plain"}'
)


def test_item_22_dump_file_bytes(tmp_path):
    make_rows('a/b ü € "q" 😀', 'plain')
    path = tmp_path / 'out.dump'

    out, err = run_command('cqrs_bulk_dump', '-c', 'simplest', '-o', str(path), '-b', '1')

    assert path.read_bytes() == DUMP.encode()
    assert out == ''
    assert err == 'Done!\n2 instance(s) saved.\n2 instance(s) processed.\n'


def test_item_22_dump_to_stdout_bytes():
    make_rows('a/b ü € "q" 😀', 'plain')

    out, err = run_command('cqrs_bulk_dump', '-c', 'simplest', '-o', '-')

    assert out == DUMP
    assert err == 'Done!\n2 instance(s) saved.\n2 instance(s) processed.\n'


def test_item_22_dump_of_an_empty_table_is_the_cqrs_id_alone(tmp_path):
    path = tmp_path / 'out.dump'

    _, err = run_command('cqrs_bulk_dump', '-c', 'simplest', '-o', str(path))

    assert path.read_bytes() == b'simplest'
    assert err == 'Done!\n0 instance(s) saved.\n0 instance(s) processed.\n'


def test_item_22_existing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'simplest.dump').write_text('old')

    assert command_error('cqrs_bulk_dump', '-c', 'simplest') == 'File simplest.dump exists!'
    assert (tmp_path / 'simplest.dump').read_text() == 'old'


# --- item 23: cqrs_bulk_load ----------------------------------------------------------------


def row_line(pk: int, name: str) -> str:
    return (
        f'{{"cqrs_revision":0,"cqrs_updated":"2024-01-02 03:04:05.000006+00:00",'
        f'"id":{pk},"name":"{name}"}}'
    )


def test_item_23_load_messages(tmp_path):
    path = tmp_path / 'in.dump'
    lines = [
        'simplest',
        row_line(1, 'one'),
        '{bad',
        '{"id": 3, "name": "no revision"}',
        '[1]',
        row_line(6, 'six'),
    ]
    path.write_text('\n'.join(lines))

    out, err = run_command('cqrs_bulk_load', '-i', str(path))

    assert out == ''
    assert err == (
        "Dump file can't be parsed: line 3!\n"
        "Instance can't be saved: line 4!\n"
        "Instance can't be saved: line 5!\n"
        'Done!\n2 instance(s) loaded.\n'
    )
    assert sorted(SimplestReplica.objects.values_list('id', flat=True)) == [1, 6]


def test_item_23_unexpected_error_keeps_the_good_rows_of_the_batch(tmp_path, monkeypatch):
    path = tmp_path / 'in.dump'
    path.write_text(
        '\n'.join(['simplest', row_line(1, 'one'), row_line(2, 'two'), row_line(3, 'x')])
    )
    original = SimplestReplica.cqrs_save.__func__

    def cqrs_save(cls, master_data, *args, **kwargs):
        if master_data['id'] == 2:
            raise RuntimeError('boom')
        return original(cls, master_data, *args, **kwargs)

    monkeypatch.setattr(SimplestReplica, 'cqrs_save', classmethod(cqrs_save))

    _, err = run_command('cqrs_bulk_load', '-i', str(path))

    assert err == 'Unexpected error: line 3! boom\nDone!\n2 instance(s) loaded.\n'
    assert sorted(SimplestReplica.objects.values_list('id', flat=True)) == [1, 3]


@pytest.mark.parametrize(
    ('args', 'cleared'),
    [
        (['--clear'], True),
        (['-c'], True),
        (['--clear=true'], True),
        (['--clear', 'yes'], True),
        (['--clear=false'], False),
        (['-c', '0'], False),
        (['--clear='], False),
        ([], False),
    ],
)
def test_item_23_clear_flag_and_value(tmp_path, args, cleared):
    SimplestReplica.objects.create(id=50, name='orphan', cqrs_revision=0, cqrs_updated=UPDATED)
    path = tmp_path / 'in.dump'
    path.write_text('\n'.join(['simplest', row_line(1, 'one')]))

    run_command('cqrs_bulk_load', '-i', str(path), *args)

    expected = [1] if cleared else [1, 50]
    assert sorted(SimplestReplica.objects.values_list('id', flat=True)) == expected


def test_item_23_failing_delete(tmp_path, monkeypatch):
    path = tmp_path / 'in.dump'
    path.write_text('\n'.join(['simplest', row_line(1, 'one')]))

    def delete(self):
        raise DatabaseError('locked')

    monkeypatch.setattr(QuerySet, 'delete', delete)

    assert command_error('cqrs_bulk_load', '-i', str(path), '--clear') == 'Delete operation fails!'


def test_item_23_missing_and_empty_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'empty.dump').write_text('')
    (tmp_path / 'blank.dump').write_text('\n')

    assert (
        command_error('cqrs_bulk_load', '-i', 'missing.dump') == "File missing.dump doesn't exist!"
    )
    assert command_error('cqrs_bulk_load', '-i', 'empty.dump') == 'File empty.dump is empty!'
    assert command_error('cqrs_bulk_load', '-i', 'blank.dump') == 'File blank.dump is empty!'


def test_item_22_23_round_trip_keeps_the_bytes(tmp_path):
    make_rows('a/b ü € "q" 😀', 'plain')
    SimplestReplica.objects.all().delete()
    path = tmp_path / 'out.dump'
    run_command('cqrs_bulk_dump', '-c', 'simplest', '-o', str(path))

    _, err = run_command('cqrs_bulk_load', '-i', str(path), '--clear')

    assert err == 'Done!\n2 instance(s) loaded.\n'
    assert SimplestReplica.objects.get(id=1).name == 'a/b ü € "q" 😀'


# --- item 29: batch_qs ----------------------------------------------------------------------


def test_item_29_batch_qs_yields_querysets_of_batch_size_rows():
    for pk in (5, 3, 1, 4, 2):
        SimplestModel.objects.create(id=pk, name=str(pk))

    batches = list(batch_qs(SimplestModel.objects.order_by(), batch_size=2))

    assert all(isinstance(batch, QuerySet) for batch in batches)
    assert [[row.pk for row in batch] for batch in batches] == [[1, 2], [3, 4], [5]]


def test_item_29_batch_qs_pages_by_primary_key_without_offset():
    for pk in range(1, 6):
        SimplestModel.objects.create(id=pk, name=str(pk))

    with CaptureQueriesContext(connection) as queries:
        rows = [list(batch) for batch in batch_qs(SimplestModel.objects.all(), 2)]

    sqls = [q['sql'] for q in queries.captured_queries]
    assert len(sqls) == 4  # the count, then one query per batch
    assert 'COUNT(' in sqls[0]
    assert all('OFFSET' not in sql for sql in sqls)
    assert '"id" > 2' in sqls[2]
    assert sum(len(batch) for batch in rows) == 5


def test_item_29_batch_qs_values_list_and_descending_order():
    for pk in range(1, 6):
        SimplestModel.objects.create(id=pk, name=str(pk))
    flat = SimplestModel.objects.values_list('pk', flat=True)

    assert [list(b) for b in batch_qs(flat, 2)] == [[1, 2], [3, 4], [5]]
    assert [list(b) for b in batch_qs(flat.order_by('-pk'), 2)] == [[5, 4], [3, 2], [1]]
    names = SimplestModel.objects.values('name')  # no pk in the rows: still paged by pk
    assert [[r['name'] for r in b] for b in batch_qs(names, 3)] == [['1', '2', '3'], ['4', '5']]


def test_item_29_batch_qs_keeps_another_ordering():
    for pk, name in [(1, 'c'), (2, 'a'), (3, 'b')]:
        SimplestModel.objects.create(id=pk, name=name)

    batches = batch_qs(SimplestModel.objects.order_by('name'), 2)

    assert [[row.name for row in batch] for batch in batches] == [['a', 'b'], ['c']]


def test_item_29_batch_qs_counts_first_and_rejects_bad_sizes():
    assert list(batch_qs(SimplestModel.objects.all())) == []
    with pytest.raises(ValueError, match='batch_size'):
        list(batch_qs(SimplestModel.objects.all(), 0))
