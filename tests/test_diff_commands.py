"""The diff commands (SPEC §7): cqrs_diff_master | cqrs_diff_replica | cqrs_diff_sync and
cqrs_deleted_diff_replica | cqrs_deleted_diff_master | cqrs_deleted_sync_replica, run in-process.

The test project has the master and the replica tables in one database and ``LoopbackTransport``
applies every published message at once, so a SYNC repairs the replica table immediately.
"""

import io
import re
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from dj_cqrs.constants import SignalType
from tests import settings as test_settings
from tests.dj_master.models import (
    FilteredModel,
    SimplestModel,
    SometimesSyncedModel,
    UUIDPkModel,
)
from tests.dj_replica.models import MappedReplica, SimplestReplica, UUIDReplica
from tests.harness import command_fails, run_command

pytestmark = pytest.mark.django_db(transaction=True)

HEADER_DATE = r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00:00'


# --- helpers --------------------------------------------------------------------------------


def split_header(output, parts=2):
    """The header fields and body lines of a stream; checks the format of the header."""
    assert output.endswith('\n')
    header, *body = output.splitlines()
    fields = header.split(',')
    assert len(fields) == parts
    assert re.fullmatch(HEADER_DATE, fields[1]), header
    return fields, body


def header_date(seconds_ago=0):
    return str(timezone.now() - timedelta(seconds=seconds_ago))


def create_simplest(*ids):
    return [SimplestModel.objects.create(id=pk, name=f'name {pk}') for pk in ids]


def bump(instance, times=1):
    for _ in range(times):
        instance.name = f'{instance.name}+'
        instance.save()


def replica_state():
    return list(SimplestReplica.objects.order_by('id').values_list('id', 'name', 'cqrs_revision'))


def master_state():
    return list(SimplestModel.objects.order_by('id').values_list('id', 'name', 'cqrs_revision'))


def queries_on(context, table, verb='SELECT'):
    return [
        q['sql']
        for q in context.captured_queries
        if q['sql'].startswith(verb) and table in q['sql']
    ]


class BrokenPipeStream(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, 'Broken pipe')


# --- cqrs_diff_master -----------------------------------------------------------------------


def test_diff_master_prints_header_then_pk_revision_pairs():
    first, second, _third = create_simplest(1, 2, 3)
    bump(second, 2)
    bump(first)
    before = timezone.now()

    out, err = run_command('cqrs_diff_master', '--cqrs-id', 'simplest')

    (cqrs_id, now), body = split_header(out)
    assert cqrs_id == 'simplest'
    assert before <= parse_datetime(now) <= timezone.now()
    assert body == ['[[1,1],[2,2],[3,0]]']
    assert out == f'simplest,{now}\n[[1,1],[2,2],[3,0]]\n'
    assert err == ''


def test_diff_master_short_option_names():
    create_simplest(1, 2)

    out, _ = run_command('cqrs_diff_master', '-cid', 'simplest', '-f', '{"id": 2}', '-b', '5')

    assert split_header(out)[1] == ['[[2,0]]']


def test_diff_master_filter():
    create_simplest(1, 2, 3, 4)

    out, _ = run_command(
        'cqrs_diff_master', '--cqrs-id', 'simplest', '--filter', '{"id__in": [2, 4]}'
    )

    assert split_header(out)[1] == ['[[2,0],[4,0]]']


def test_item_24_diff_master_empty_table_prints_nothing_on_stdout():
    out, err = run_command('cqrs_diff_master', '--cqrs-id', 'simplest')

    assert out == ''
    assert err == 'No objects found for filter!\n'


def test_item_24_diff_master_filter_matching_nothing():
    create_simplest(1)

    out, err = run_command('cqrs_diff_master', '--cqrs-id', 'simplest', '-f', '{"id__gt": 1}')

    assert (out, err) == ('', 'No objects found for filter!\n')


def test_item_24_diff_master_leaves_out_rows_not_synced():
    for pk in range(1, 6):
        name = 'private' if pk in (2, 4) else 'public'
        SometimesSyncedModel.objects.create(id=pk, name=name)

    out, _ = run_command('cqrs_diff_master', '--cqrs-id', 'sometimes', '-b', '2')

    # Batches are counted before the filtering: [1, 2], [3, 4], [5].
    assert split_header(out)[1] == ['[[1,0]]', '[[3,0]]', '[[5,0]]']


def test_diff_master_batches_one_query_each(django_assert_num_queries):
    create_simplest(5, 1, 4, 2, 3)

    with django_assert_num_queries(4):  # the count, then one query per batch
        out, _ = run_command('cqrs_diff_master', '--cqrs-id', 'simplest', '-b', '2')

    assert split_header(out)[1] == ['[[1,0],[2,0]]', '[[3,0],[4,0]]', '[[5,0]]']


def test_diff_master_keyset_pagination():
    create_simplest(1, 2, 3, 4)

    with CaptureQueriesContext(connection) as queries:
        run_command('cqrs_diff_master', '--cqrs-id', 'simplest', '-b', '2')

    selects = queries_on(queries, 'dj_master_simplestmodel')
    assert len(selects) == 3  # the count, then 2 rows and 2 rows
    assert 'COUNT(' in selects[0]
    assert all('OFFSET' not in sql for sql in selects)
    assert '"id" > 2' in selects[2]


def test_diff_master_uuid_pks_are_strings():
    rows = sorted((UUIDPkModel.objects.create(name=str(i)) for i in range(3)), key=lambda r: r.pk)

    out, _ = run_command('cqrs_diff_master', '--cqrs-id', 'uuid_pk', '-b', '2')

    (cqrs_id, _now), body = split_header(out)
    assert cqrs_id == 'uuid_pk'
    assert body == [
        f'[["{rows[0].pk}",0],["{rows[1].pk}",0]]',
        f'[["{rows[2].pk}",0]]',
    ]


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['--cqrs-id', 'unknown'], 'Wrong CQRS ID: unknown!'),
        (['--cqrs-id', 'simplest', '-f', '{"id": '], 'Bad filter kwargs!'),
        (['--cqrs-id', 'simplest', '-f', '[1]'], 'Bad filter kwargs!'),
        (
            ['--cqrs-id', 'simplest', '-f', '{"nope": 1}'],
            "Bad filter kwargs! Cannot resolve keyword 'nope' into field. Choices are: "
            'cqrs_revision, cqrs_updated, id, name',
        ),
        (
            ['--cqrs-id', 'simplest', '-f', '{"id": "abc"}'],
            "Bad filter kwargs! Field 'id' expected a number but got 'abc'.",
        ),
        (['--cqrs-id', 'simplest', '-b', '0'], '--batch must be at least 1, not 0.'),
    ],
)
def test_item_25_diff_master_bad_arguments(args, message):
    create_simplest(1)

    error, out = command_fails('cqrs_diff_master', *args)

    assert error == message
    assert out == ''


def test_diff_master_broken_pipe_is_a_command_error():
    create_simplest(1)

    with pytest.raises(CommandError, match='next command of the pipe stopped reading'):
        call_command('cqrs_diff_master', '--cqrs-id', 'simplest', stdout=BrokenPipeStream())


# --- cqrs_diff_replica ----------------------------------------------------------------------


def test_diff_replica_prints_missing_and_stale_pks():
    create_simplest(1, 2, 3, 4)
    SimplestReplica.objects.filter(id=2).delete()
    SimplestReplica.objects.filter(id=3).update(cqrs_revision=5, name='stale')
    now = header_date()

    out, err = run_command(
        'cqrs_diff_replica', stdin=f'simplest,{now}\n[[1,0],[2,0],[3,0],[4,0]]\n'
    )

    assert out == f'simplest,{now},replica\n[2,3]\n'
    assert err == 'PK to resync: {2, 3}\n'


def test_item_24_diff_replica_prints_pks_to_resync_on_stderr_per_line():
    create_simplest(1, 2, 3)
    now = header_date()
    stdin = f'simplest,{now}\n[[1,0],[9,0],[2,1]]\n[[3,0]]\n[[8,0]]\n'

    out, err = run_command('cqrs_diff_replica', stdin=stdin)

    assert out == f'simplest,{now},replica\n[9,2]\n[8]\n'
    assert err == 'PK to resync: {9, 2}\nPK to resync: {8}\n'


def test_diff_replica_master_revision_ahead():
    first, second = create_simplest(1, 2)
    now = header_date()

    out, _ = run_command('cqrs_diff_replica', stdin=f'simplest,{now}\n[[1,3],[2,0]]\n[[5,0]]\n')

    assert out == f'simplest,{now},replica\n[1]\n[5]\n'


def test_diff_replica_skips_lines_without_differences():
    create_simplest(1, 2, 3)
    now = header_date()
    stdin = f'simplest,{now}\n[[1,0]]\n\n[]\n[[2,0],[3,0]]\n'

    out, _ = run_command('cqrs_diff_replica', stdin=stdin)

    assert out == f'simplest,{now},replica\n'


def test_diff_replica_ignores_replica_only_rows():
    create_simplest(1, 2)
    now = header_date()

    out, _ = run_command('cqrs_diff_replica', stdin=f'simplest,{now}\n[[1,0]]\n')

    assert out == f'simplest,{now},replica\n'


def test_diff_replica_one_query_per_line(django_assert_num_queries):
    create_simplest(1, 2, 3, 4, 5)
    now = header_date()
    stdin = f'simplest,{now}\n[[1,0],[2,1]]\n[[3,0],[4,0]]\n[[5,2],[6,0]]\n'

    with django_assert_num_queries(3):
        out, _ = run_command('cqrs_diff_replica', stdin=stdin)

    assert out == f'simplest,{now},replica\n[2]\n[5,6]\n'


def test_diff_replica_uses_the_replica_pk_name():
    first = FilteredModel.objects.create(name='a')
    second = FilteredModel.objects.create(name='b')
    MappedReplica.objects.filter(remote_id=second.pk).delete()
    now = header_date()
    stdin = f'filtered,{now}\n[[{first.pk},0],[{second.pk},0]]\n'

    out, _ = run_command('cqrs_diff_replica', stdin=stdin)

    assert out == f'filtered,{now},replica\n[{second.pk}]\n'


def test_diff_replica_uuid_pks():
    kept, gone = UUIDPkModel.objects.create(name='a'), UUIDPkModel.objects.create(name='b')
    UUIDReplica.objects.filter(pk=gone.pk).delete()
    now = header_date()
    # Pks are compared as UUIDs, not as text.
    stdin = f'uuid_pk,{now}\n[["{str(kept.pk).upper()}",0],["{gone.pk.hex}",0]]\n'

    out, _ = run_command('cqrs_diff_replica', stdin=stdin)

    assert out == f'uuid_pk,{now},replica\n["{gone.pk}"]\n'


def test_diff_replica_queue_from_settings():
    now = header_date()
    cqrs = dict(test_settings.CQRS, queue='another')

    with override_settings(CQRS=cqrs):
        out, _ = run_command('cqrs_diff_replica', stdin=f'simplest,{now}\n')

    assert out == f'simplest,{now},another\n'


def test_diff_replica_reads_the_stdin_option():
    now = header_date()
    out = io.StringIO()

    call_command('cqrs_diff_replica', stdin=io.StringIO(f'simplest,{now}\n[[9,0]]\n'), stdout=out)

    assert out.getvalue() == f'simplest,{now},replica\n[9]\n'


@pytest.mark.parametrize(
    ('stdin', 'message'),
    [
        ('', 'cqrs_diff_replica: no input.'),
        ('\n', 'cqrs_diff_replica: no input.'),
        ('simplest\n[[1,0]]\n', "cqrs_diff_replica: bad header line 'simplest'."),
        ('simplest,yesterday\n', "cqrs_diff_replica: Bad date in the header: 'yesterday'."),
        (f',{header_date()}\n', 'cqrs_diff_replica: no CQRS_ID in the header line.'),
        (f'unknown,{header_date()}\n', 'Wrong CQRS ID: unknown!'),
        ('unknown,yesterday\n', 'Wrong CQRS ID: unknown!'),
        (f'raw,{header_date()}\n', 'raw is not a Django model with a table'),
        # The output of cqrs_diff_replica itself is not an input of cqrs_diff_replica.
        (f'simplest,{header_date()},replica\n', 'Bad date in the header'),
    ],
)
def test_diff_replica_bad_header_writes_nothing(stdin, message):
    error, out = command_fails('cqrs_diff_replica', stdin=stdin)

    assert message in error
    assert out == ''


@pytest.mark.parametrize(
    ('line', 'message'),
    [
        ('[[1,0]', 'line 2 is not valid JSON'),
        ('{"1": 0}', 'line 2 is not a JSON list of [pk, revision] pairs.'),
        ('[1, 2]', 'line 2: 1 is not a [pk, revision] pair.'),
        ('[[1]]', 'line 2: [1] is not a [pk, revision] pair.'),
        ('[[1,"0"]]', "line 2: [1, '0'] is not a [pk, revision] pair."),
        ('[[1,true]]', 'line 2: [1, True] is not a [pk, revision] pair.'),
        ('[["abc",0]]', "line 2: 'abc' is not a valid primary key of simplest."),
        ('[[null,0]]', 'line 2: None is not a primary key'),
        ('[[[1],0]]', 'line 2: [1] is not a primary key'),
    ],
)
def test_diff_replica_bad_body_line(line, message):
    error, out = command_fails('cqrs_diff_replica', stdin=f'simplest,{header_date()}\n{line}\n')

    assert f'cqrs_diff_replica: {message}' in error
    assert out.count('\n') == 1  # only the header


def test_diff_replica_reports_the_line_number():
    error, _ = command_fails(
        'cqrs_diff_replica', stdin=f'simplest,{header_date()}\n[[1,0]]\n\nnope\n'
    )

    assert 'line 4 is not valid JSON' in error


# --- cqrs_diff_sync -------------------------------------------------------------------------


def test_diff_sync_publishes_syncs_to_the_queue(produced):
    create_simplest(1, 2, 3)
    SimplestReplica.objects.filter(id=2).delete()
    SimplestReplica.objects.filter(id=3).update(cqrs_revision=5, name='stale')
    produced.clear()

    out, err = run_command('cqrs_diff_sync', stdin=f'simplest,{header_date()},replica\n[2,3]\n')

    assert out == 'Done!\n2 instance(s) synced.\n2 instance(s) processed.\n'
    assert err == ''
    assert [(p.signal_type, p.cqrs_id, p.pk, p.queue) for p in produced] == [
        (SignalType.SYNC, 'simplest', 2, 'replica'),
        (SignalType.SYNC, 'simplest', 3, 'replica'),
    ]
    assert replica_state() == master_state()


def test_diff_sync_none_queue_is_a_broadcast(produced):
    create_simplest(1, 2)
    produced.clear()

    out, _ = run_command('cqrs_diff_sync', stdin=f'simplest,{header_date()},None\n[1]\n[2]\n')

    # One cqrs_sync run per line, as in django-cqrs.
    assert out == 'Done!\n1 instance(s) synced.\n1 instance(s) processed.\n' * 2
    assert [(p.pk, p.queue) for p in produced] == [(1, None), (2, None)]


def test_diff_sync_skips_pks_missing_on_the_master(produced):
    create_simplest(1)
    produced.clear()

    out, _ = run_command(
        'cqrs_diff_sync', stdin=f'simplest,{header_date()},replica\n[7,1,8]\n[]\n\n'
    )

    assert out == (
        'Done!\n1 instance(s) synced.\n1 instance(s) processed.\nNo objects found for filter!\n'
    )
    assert [p.pk for p in produced] == [1]


def test_diff_sync_batches(produced):
    create_simplest(1, 2, 3, 4, 5)
    produced.clear()

    with CaptureQueriesContext(connection) as queries:
        run_command(
            'cqrs_diff_sync', '-b', '2', stdin=f'simplest,{header_date()},replica\n[5,4,3,2,1]\n'
        )

    selects = queries_on(queries, 'dj_master_simplestmodel')
    # the total (as django-cqrs), the count of batch_qs, then pages of 2, 2 and 1 rows
    assert sum('COUNT(' in sql for sql in selects) == 2
    assert len(selects) == 2 + 3
    assert [p.pk for p in produced] == [1, 2, 3, 4, 5]


def test_diff_sync_uuid_pks(produced):
    rows = [UUIDPkModel.objects.create(name=str(i)) for i in range(2)]
    UUIDReplica.objects.all().delete()
    produced.clear()
    pks = ','.join(f'"{row.pk}"' for row in rows)

    run_command('cqrs_diff_sync', stdin=f'uuid_pk,{header_date()},replica\n[{pks}]\n')

    assert sorted(str(p.pk) for p in produced) == sorted(str(row.pk) for row in rows)
    assert set(UUIDReplica.objects.values_list('pk', flat=True)) == {row.pk for row in rows}


def test_item_21_diff_sync_progress_is_the_cqrs_sync_text_per_line():
    create_simplest(1, 2, 3)

    out, err = run_command(
        'cqrs_diff_sync', '-p', stdin=f'simplest,{header_date()},replica\n[1,2]\n[3]\n'
    )

    assert err == ''
    pattern = (
        r'Processing 2 records with batch size 10000\n'
        r'\r2 of 2 processed - 100% with rate [\d.]+ rps, to go [\d:]+ \.\.\. {20}'
        r'Done!\n2 instance\(s\) synced\.\n2 instance\(s\) processed\.\n'
        r'Processing 1 records with batch size 10000\n'
        r'\r1 of 1 processed - 100% with rate [\d.]+ rps, to go [\d:]+ \.\.\. {20}'
        r'Done!\n1 instance\(s\) synced\.\n1 instance\(s\) processed\.\n'
    )
    assert re.fullmatch(pattern, out), out


def test_diff_sync_without_progress_is_quiet():
    create_simplest(1)

    _, err = run_command('cqrs_diff_sync', stdin=f'simplest,{header_date()},replica\n[1]\n')

    assert err == ''  # neither through ``self.stderr`` nor straight to ``sys.stderr``


@pytest.mark.parametrize(
    ('stdin', 'message'),
    [
        ('', 'cqrs_diff_sync: no input.'),
        (f'simplest,{header_date()}\n[1]\n', 'cqrs_diff_sync: bad header line'),
        (f'simplest,{header_date()},\n[1]\n', 'cqrs_diff_sync: no queue in the header line.'),
        ('simplest,never,replica\n[1]\n', "Bad date in the header: 'never'."),
        (f'unknown,{header_date()},replica\n[1]\n', 'Wrong CQRS ID: unknown!'),
        (f'simplest,{header_date()},replica\n[1]\n[1\n', 'line 3 is not valid JSON'),
        (f'simplest,{header_date()},replica\n{{"pk": 1}}\n', 'line 2 is not a JSON list'),
        (f'simplest,{header_date()},replica\n["x"]\n', "'x' is not a valid primary key"),
    ],
)
def test_diff_sync_bad_input(produced, stdin, message):
    create_simplest(1)
    produced.clear()

    error, _ = command_fails('cqrs_diff_sync', stdin=stdin)

    assert message in error
    if 'line 3' not in message:
        assert produced == []


def test_diff_sync_bad_batch():
    error, _ = command_fails(
        'cqrs_diff_sync', '-b', '0', stdin=f'simplest,{header_date()},replica\n'
    )

    assert '--batch must be at least 1' in error


# --- cqrs_deleted_diff_replica --------------------------------------------------------------


def test_deleted_diff_replica_prints_replica_pks():
    create_simplest(3, 1, 2)
    before = timezone.now()

    out, err = run_command('cqrs_deleted_diff_replica', '--cqrs-id', 'simplest')

    (cqrs_id, now), body = split_header(out)
    assert cqrs_id == 'simplest'
    assert before <= parse_datetime(now) <= timezone.now()
    assert out == f'simplest,{now}\n[1,2,3]\n'
    assert err == ''


def test_deleted_diff_replica_reads_the_replica_table():
    create_simplest(1, 2)
    SimplestReplica.objects.filter(id=1).delete()
    SimplestModel.objects.filter(id=2)._raw_delete('default')

    out, _ = run_command('cqrs_deleted_diff_replica', '-cid', 'simplest')

    assert split_header(out)[1] == ['[2]']


def test_deleted_diff_replica_batches(django_assert_num_queries):
    create_simplest(1, 2, 3, 4, 5)

    with django_assert_num_queries(4):  # the count, then one query per batch
        out, _ = run_command('cqrs_deleted_diff_replica', '--cqrs-id', 'simplest', '-b', '2')

    assert split_header(out)[1] == ['[1,2]', '[3,4]', '[5]']


def test_deleted_diff_replica_filter():
    create_simplest(1, 2, 3)

    out, _ = run_command(
        'cqrs_deleted_diff_replica', '--cqrs-id', 'simplest', '-f', '{"id__gte": 2}'
    )

    assert split_header(out)[1] == ['[2,3]']


def test_item_24_deleted_diff_replica_empty_table():
    out, err = run_command('cqrs_deleted_diff_replica', '--cqrs-id', 'simplest')

    assert (out, err) == ('', 'No objects found for filter!\n')


def test_deleted_diff_replica_uses_the_replica_pk_name():
    rows = [FilteredModel.objects.create(name=str(i)) for i in range(3)]

    out, _ = run_command(
        'cqrs_deleted_diff_replica', '--cqrs-id', 'filtered', '-f', '{"title": "1"}'
    )

    assert split_header(out)[1] == [f'[{rows[1].pk}]']


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['--cqrs-id', 'unknown'], 'Wrong CQRS ID: unknown!'),
        (['--cqrs-id', 'raw'], 'raw is not a Django model with a table'),
        (['--cqrs-id', 'simplest', '-f', 'id=1'], 'Bad filter kwargs!'),
        (
            ['--cqrs-id', 'simplest', '-f', '{"nope": 1}'],
            'Bad filter kwargs! Cannot resolve keyword',
        ),
        (['--cqrs-id', 'filtered', '-f', '{"name": "a"}'], 'Bad filter kwargs! Cannot resolve'),
        (['--cqrs-id', 'simplest', '-b', '-1'], '--batch must be at least 1'),
    ],
)
def test_deleted_diff_replica_bad_arguments(args, message):
    create_simplest(1)

    error, out = command_fails('cqrs_deleted_diff_replica', *args)

    assert message in error
    assert out == ''


# --- cqrs_deleted_diff_master ---------------------------------------------------------------


def test_deleted_diff_master_prints_pks_missing_on_the_master():
    create_simplest(1, 2, 4)
    now = header_date()

    out, err = run_command(
        'cqrs_deleted_diff_master', stdin=f'simplest,{now}\n[1,2,3]\n[4]\n[5,6]\n'
    )

    assert out == f'simplest,{now}\n[3]\n[5,6]\n'
    assert err == 'PK to delete: [3]\nPK to delete: [5, 6]\n'


def test_deleted_diff_master_passes_the_header_unchanged():
    now = '2024-02-29 23:59:59.999999+00:00'

    out, _ = run_command('cqrs_deleted_diff_master', stdin=f'simplest,{now}\n')

    assert out == f'simplest,{now}\n'


def test_deleted_diff_master_one_query_per_line(django_assert_num_queries):
    create_simplest(1, 2, 3)
    stdin = f'simplest,{header_date()}\n[1,2]\n[]\n\n[3,4]\n[5]\n'

    with django_assert_num_queries(3):
        out, _ = run_command('cqrs_deleted_diff_master', stdin=stdin)

    assert out.splitlines()[1:] == ['[4]', '[5]']


def test_deleted_diff_master_sees_rows_hidden_by_nothing_but_the_table():
    create_simplest(1, 2)
    SimplestModel.objects.filter(id=1)._raw_delete('default')

    out, _ = run_command('cqrs_deleted_diff_master', stdin=f'simplest,{header_date()}\n[1,2]\n')

    assert out.splitlines()[1:] == ['[1]']


def test_deleted_diff_master_uuid_pks():
    kept = UUIDPkModel.objects.create(name='a')
    gone = uuid.uuid4()
    stdin = f'uuid_pk,{header_date()}\n["{kept.pk}","{gone}"]\n'

    out, _ = run_command('cqrs_deleted_diff_master', stdin=stdin)

    assert out.splitlines()[1:] == [f'["{gone}"]']


@pytest.mark.parametrize(
    ('stdin', 'message'),
    [
        ('', 'cqrs_deleted_diff_master: no input.'),
        ('simplest\n[1]\n', "cqrs_deleted_diff_master: bad header line 'simplest'."),
        ('simplest,2024-13-45 00:00:00\n[1]\n', 'Bad date in the header'),
        (f'unknown,{header_date()}\n[1]\n', 'Wrong CQRS ID: unknown!'),
    ],
)
def test_deleted_diff_master_bad_header_writes_nothing(stdin, message):
    error, out = command_fails('cqrs_deleted_diff_master', stdin=stdin)

    assert message in error
    assert out == ''


@pytest.mark.parametrize(
    ('line', 'message'),
    [
        ('[1,', 'line 2 is not valid JSON'),
        ('1', 'line 2 is not a JSON list of primary keys.'),
        ('"1"', 'line 2 is not a JSON list of primary keys.'),
        ('[[1,0]]', 'line 2: [1, 0] is not a primary key'),
        ('[true]', 'line 2: True is not a primary key'),
        ('["one"]', "line 2: 'one' is not a valid primary key of simplest."),
    ],
)
def test_deleted_diff_master_bad_body_line(line, message):
    error, out = command_fails(
        'cqrs_deleted_diff_master', stdin=f'simplest,{header_date()}\n{line}\n'
    )

    assert f'cqrs_deleted_diff_master: {message}' in error
    assert out.count('\n') == 1


# --- cqrs_deleted_sync_replica --------------------------------------------------------------


def test_deleted_sync_replica_deletes_the_listed_rows():
    create_simplest(1, 2, 3, 4)

    out, err = run_command(
        'cqrs_deleted_sync_replica', stdin=f'simplest,{header_date()}\n[1,3]\n[9]\n'
    )

    assert (out, err) == ('', '')
    assert [row[0] for row in replica_state()] == [2, 4]
    assert [row[0] for row in master_state()] == [1, 2, 3, 4]


def test_deleted_sync_replica_keeps_rows_updated_after_the_header():
    create_simplest(1, 2)
    now = header_date()
    SimplestReplica.objects.filter(id=2).update(cqrs_updated=timezone.now())

    run_command('cqrs_deleted_sync_replica', stdin=f'simplest,{now}\n[1,2]\n')

    assert [row[0] for row in replica_state()] == [2]


def test_deleted_sync_replica_header_date_is_compared_in_utc():
    create_simplest(1)
    # The same instant written in another time zone (the writer's) is still before the row.
    earlier = (timezone.now() - timedelta(hours=1)).astimezone(timezone.get_fixed_timezone(180))

    run_command('cqrs_deleted_sync_replica', stdin=f'simplest,{earlier}\n[1]\n')

    assert [row[0] for row in replica_state()] == [1]


def test_deleted_sync_replica_one_delete_and_one_transaction_per_line(settings):
    settings.CQRS = {**settings.CQRS, 'replica': {**settings.CQRS['replica'], 'tombstone_ttl': 0}}
    create_simplest(1, 2, 3, 4, 5)

    with CaptureQueriesContext(connection) as queries:
        run_command(
            'cqrs_deleted_sync_replica', stdin=f'simplest,{header_date()}\n[1,2]\n[]\n[3]\n[4]\n'
        )

    deletes = queries_on(queries, 'dj_replica_simplestreplica', 'DELETE')
    assert len(deletes) == 3
    verbs = [q['sql'].split()[0] for q in queries.captured_queries]
    assert verbs == ['BEGIN', 'DELETE', 'COMMIT'] * 3
    assert not queries_on(queries, 'dj_replica_simplestreplica', 'SELECT')
    assert [row[0] for row in replica_state()] == [5]


def test_item_04_deleted_sync_replica_with_tombstones_one_transaction_per_line():
    create_simplest(1, 2, 3, 4, 5)

    with CaptureQueriesContext(connection) as queries:
        run_command(
            'cqrs_deleted_sync_replica', stdin=f'simplest,{header_date()}\n[1,2]\n[]\n[3]\n[4]\n'
        )

    assert len(queries_on(queries, 'dj_replica_simplestreplica', 'DELETE')) == 3
    verbs = [q['sql'].split()[0] for q in queries.captured_queries]
    # The rows' revisions, their deletion, the tombstones already there, the new ones.
    assert verbs == ['BEGIN', 'SELECT', 'DELETE', 'SELECT', 'INSERT', 'COMMIT'] * 3
    assert [row[0] for row in replica_state()] == [5]


def test_deleted_sync_replica_uses_the_replica_pk_name():
    rows = [FilteredModel.objects.create(name=str(i)) for i in range(2)]

    run_command('cqrs_deleted_sync_replica', stdin=f'filtered,{header_date()}\n[{rows[0].pk}]\n')

    assert list(MappedReplica.objects.values_list('remote_id', flat=True)) == [rows[1].pk]


def test_deleted_sync_replica_uuid_pks():
    rows = [UUIDPkModel.objects.create(name=str(i)) for i in range(2)]

    run_command('cqrs_deleted_sync_replica', stdin=f'uuid_pk,{header_date()}\n["{rows[0].pk}"]\n')

    assert list(UUIDReplica.objects.values_list('pk', flat=True)) == [rows[1].pk]


@pytest.mark.parametrize(
    ('stdin', 'message'),
    [
        ('', 'cqrs_deleted_sync_replica: no input.'),
        (' \n[1]\n', 'cqrs_deleted_sync_replica: no input.'),
        ('simplest\n[1]\n', 'bad header line'),
        ('simplest,now\n[1]\n', "Bad date in the header: 'now'."),
        (f'unknown,{header_date()}\n[1]\n', 'Wrong CQRS ID: unknown!'),
        (f'raw,{header_date()}\n[1]\n', 'raw is not a Django model with a table'),
        # A bad line anywhere: nothing is deleted, not even the lines before it.
        (f'simplest,{header_date()}\n[1]\n[2\n', 'line 3 is not valid JSON'),
        (f'simplest,{header_date()}\n[1]\n{{"2": 1}}\n', 'line 3 is not a JSON list'),
        (f'simplest,{header_date()}\n[1]\n["two"]\n', "line 3: 'two' is not a valid primary"),
    ],
)
def test_deleted_sync_replica_bad_input_deletes_nothing(stdin, message):
    create_simplest(1, 2)

    error, _ = command_fails('cqrs_deleted_sync_replica', stdin=stdin)

    assert message in error
    assert [row[0] for row in replica_state()] == [1, 2]


# --- pipelines ------------------------------------------------------------------------------


def diff_pipeline(cqrs_id, *args):
    master_out, _ = run_command('cqrs_diff_master', '--cqrs-id', cqrs_id, *args)
    replica_out, _ = run_command('cqrs_diff_replica', stdin=master_out)
    sync_out, _ = run_command('cqrs_diff_sync', '-b', '2', stdin=replica_out)
    return replica_out, sync_out


def deleted_pipeline(cqrs_id, *args, between=None):
    replica_out, _ = run_command('cqrs_deleted_diff_replica', '--cqrs-id', cqrs_id, *args)
    master_out, _ = run_command('cqrs_deleted_diff_master', stdin=replica_out)
    if between is not None:
        between()
    _, err = run_command('cqrs_deleted_sync_replica', stdin=master_out)
    return master_out, err


def test_diff_pipeline_repairs_the_replica(produced):
    rows = create_simplest(1, 2, 3, 4, 5, 6, 7)
    bump(rows[3], 3)
    SimplestReplica.objects.filter(id__in=[2, 6]).delete()  # behind the replica's back
    SimplestReplica.objects.filter(id=4).update(cqrs_revision=1, name='stale')  # behind
    SimplestReplica.objects.filter(id=5).update(cqrs_revision=9, name='stale')  # ahead
    assert replica_state() != master_state()
    produced.clear()

    replica_out, err = diff_pipeline('simplest', '-b', '3')

    (cqrs_id, _now, queue), body = split_header(replica_out, parts=3)
    assert (cqrs_id, queue) == ('simplest', 'replica')
    assert body == ['[2]', '[4,5,6]']
    assert err == (
        'Done!\n1 instance(s) synced.\n1 instance(s) processed.\n'
        'Done!\n3 instance(s) synced.\n3 instance(s) processed.\n'
    )
    assert {(p.signal_type, p.queue) for p in produced} == {(SignalType.SYNC, 'replica')}
    assert replica_state() == master_state()

    # Once repaired, there is nothing left to do.
    produced.clear()
    replica_out, err = diff_pipeline('simplest')
    assert split_header(replica_out, parts=3)[1] == []
    assert err == ''
    assert produced == []


def test_diff_pipeline_with_a_filter():
    create_simplest(1, 2, 3)
    SimplestReplica.objects.all().delete()

    diff_pipeline('simplest', '-f', '{"id__gte": 2}')

    assert [row[0] for row in replica_state()] == [2, 3]


def test_diff_pipeline_mapped_and_uuid_pks():
    mapped = [FilteredModel.objects.create(name=str(i)) for i in range(4)]
    MappedReplica.objects.filter(remote_id=mapped[1].pk).delete()
    MappedReplica.objects.filter(remote_id=mapped[2].pk).update(cqrs_revision=4, title='stale')
    uuids = [UUIDPkModel.objects.create(name=str(i)) for i in range(4)]
    UUIDReplica.objects.filter(pk=uuids[0].pk).delete()
    UUIDReplica.objects.filter(pk=uuids[3].pk).update(cqrs_revision=4, name='stale')

    diff_pipeline('filtered', '-b', '3')
    diff_pipeline('uuid_pk', '-b', '3')

    assert sorted(MappedReplica.objects.values_list('remote_id', 'title', 'cqrs_revision')) == [
        (row.pk, row.name, 0) for row in mapped
    ]
    assert sorted(UUIDReplica.objects.values_list('id', 'name', 'cqrs_revision')) == sorted(
        (row.pk, row.name, 0) for row in uuids
    )


def test_deleted_pipeline_removes_rows_deleted_on_the_master():
    create_simplest(1, 2, 3, 4, 5, 6)
    SimplestModel.objects.filter(id__in=[2, 4, 5])._raw_delete('default')  # no CQRS message
    assert len(replica_state()) == 6

    master_out, err = deleted_pipeline('simplest', '-b', '2')

    assert master_out.splitlines()[1:] == ['[2]', '[4]', '[5]']
    assert err == ''
    assert replica_state() == master_state()


def test_deleted_pipeline_keeps_rows_updated_after_it_started():
    create_simplest(1, 2, 3)
    SimplestModel.objects.filter(id__in=[1, 2])._raw_delete('default')

    def replica_row_updated_meanwhile():
        SimplestReplica.objects.filter(id=2).update(cqrs_updated=timezone.now())

    deleted_pipeline('simplest', between=replica_row_updated_meanwhile)

    assert [row[0] for row in replica_state()] == [2, 3]


def test_deleted_pipeline_mapped_and_uuid_pks():
    mapped = [FilteredModel.objects.create(name=str(i)) for i in range(3)]
    FilteredModel.objects.filter(pk=mapped[1].pk)._raw_delete('default')
    uuids = [UUIDPkModel.objects.create(name=str(i)) for i in range(3)]
    UUIDPkModel.objects.filter(pk__in=[uuids[0].pk, uuids[2].pk])._raw_delete('default')

    deleted_pipeline('filtered', '-b', '2')
    deleted_pipeline('uuid_pk', '-b', '2')

    assert sorted(MappedReplica.objects.values_list('remote_id', flat=True)) == [
        mapped[0].pk,
        mapped[2].pk,
    ]
    assert list(UUIDReplica.objects.values_list('pk', flat=True)) == [uuids[1].pk]


def test_pipeline_after_a_failed_first_command_fails():
    # In a shell pipe the first command's error leaves the next one without input.
    with pytest.raises(CommandError):
        run_command('cqrs_diff_master', '--cqrs-id', 'unknown')

    error, out = command_fails('cqrs_diff_replica', stdin='')
    assert 'no input' in error
    assert out == ''
    error, _ = command_fails('cqrs_diff_sync', stdin='')
    assert 'no input' in error
    error, _ = command_fails('cqrs_deleted_diff_master', stdin='')
    assert 'no input' in error
    error, _ = command_fails('cqrs_deleted_sync_replica', stdin='')
    assert 'no input' in error
