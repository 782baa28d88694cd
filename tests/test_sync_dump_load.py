"""``cqrs_sync``, ``cqrs_bulk_dump`` and ``cqrs_bulk_load`` run in-process (SPEC §7).

The master and replica tables live in one in-memory database; ``LoopbackTransport`` applies a
published SYNC to the replica table at once.
"""

from __future__ import annotations

import io
import json
import re
import sys
import uuid
from datetime import date, datetime, time, timezone
from decimal import Decimal
from unittest import mock

import pytest
import ujson
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dj_cqrs.constants import SignalType
from dj_cqrs.transport.loopback import LoopbackTransport
from tests.dj_master.models import (
    Author,
    AutoFieldsModel,
    FilteredModel,
    NoProduceModel,
    Publisher,
    SimplestModel,
    SometimesSyncedModel,
    UUIDPkModel,
)
from tests.dj_replica.models import (
    AuthorReplica,
    AutoFieldsReplica,
    MappedReplica,
    PublisherReplica,
    RawReplica,
    SimplestReplica,
    UUIDReplica,
)
from tests.harness import command_error, run_command

pytestmark = pytest.mark.django_db(transaction=True)

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------------
# helpers


def master_selects(queries, table: str) -> list[str]:
    return [
        q['sql']
        for q in queries
        if q['sql'].lstrip().upper().startswith('SELECT') and f'"{table}"' in q['sql']
    ]


def page_selects(queries, table: str) -> list[str]:
    """SELECTs of rows (not COUNTs) from ``table``."""
    return [sql for sql in master_selects(queries, table) if 'COUNT(' not in sql.upper()]


# One ``--progress`` update of cqrs_sync / cqrs_bulk_dump (format: done, percent).
PROGRESS_STEP = (
    r'\r{0} of TOTAL processed - {1}% with rate \d+\.\d rps, '
    r'to go (\d+:\d\d:\d\d|n/a) \.\.\. {{20}}'
)


def assert_keyset(sqls: list[str]) -> None:
    for sql in sqls:
        assert 'OFFSET' not in sql.upper(), sql


@pytest.fixture
def offline(monkeypatch):
    """Master saves are collected, not applied: the replica tables stay as the test leaves them."""
    payloads = []
    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(payloads.append))
    return payloads


def make_simplest(count: int, bump: dict[int, int] | None = None) -> list[SimplestModel]:
    """``count`` rows with ids 1..count; ``bump`` {id: number of extra saves}."""
    for pk in range(1, count + 1):
        SimplestModel.objects.create(id=pk, name=f'name {pk}')
    for pk, times in (bump or {}).items():
        row = SimplestModel.objects.get(id=pk)
        for n in range(times):
            row.name = f'name {pk} v{n + 1}'
            row.save()
    return list(SimplestModel.objects.order_by('pk'))


def simplest_master_rows() -> list[tuple]:
    return list(
        SimplestModel.objects.order_by('pk').values_list(
            'id', 'name', 'cqrs_revision', 'cqrs_updated'
        )
    )


def simplest_replica_rows() -> list[tuple]:
    return list(
        SimplestReplica.objects.order_by('pk').values_list(
            'id', 'name', 'cqrs_revision', 'cqrs_updated'
        )
    )


AUTO_FIELDS = (
    'id',
    'name',
    'created_at',
    'birth_date',
    'at_time',
    'token',
    'amount',
    'ratio',
    'flag',
    'cqrs_revision',
    'cqrs_updated',
)


def make_auto_fields() -> None:
    AutoFieldsModel.objects.create(
        name='Ünïcødé "quoted" / slash \\ back',
        created_at=datetime(2021, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc),
        birth_date=date(1999, 12, 31),
        at_time=time(23, 59, 58, 765432),
        token=uuid.UUID('12345678-1234-5678-1234-567812345678'),
        amount=Decimal('12345678.90'),
        ratio=0.1,
        flag=True,
    )
    AutoFieldsModel.objects.create()  # every nullable value None, defaults elsewhere
    row = AutoFieldsModel.objects.create(name='third', amount=Decimal('-0.05'), ratio=-1e-10)
    row.flag = True
    row.save()


def write_dump(path, header: str, *lines: str) -> None:
    path.write_text('\n'.join([header, *lines]) + '\n', encoding='utf-8')


def simplest_line(pk: int, name: str, revision: int = 0) -> str:
    return json.dumps(
        {
            'id': pk,
            'name': name,
            'cqrs_revision': revision,
            'cqrs_updated': '2024-01-02 03:04:05.000006+00:00',
        }
    )


# --------------------------------------------------------------------------------------------
# cqrs_sync


def test_sync_all_publishes_one_sync_per_row(produced):
    make_simplest(4, bump={2: 2})
    SimplestReplica.objects.all().delete()
    produced.clear()

    out, err = run_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{}')

    assert out == 'Done!\n4 instance(s) synced.\n4 instance(s) processed.\n'
    assert err == ''
    assert [p.signal_type for p in produced] == [SignalType.SYNC] * 4
    assert sorted(p.pk for p in produced) == [1, 2, 3, 4]
    assert all(p.cqrs_id == 'simplest' for p in produced)
    assert all(p.queue is None for p in produced)
    by_pk = {p.pk: p.instance_data for p in produced}
    for row in SimplestModel.objects.all():
        assert by_pk[row.pk] == row.to_cqrs_dict()
    # LoopbackTransport applied them: the replica is rebuilt.
    assert simplest_replica_rows() == simplest_master_rows()


def test_sync_filter_selects_only_matching_rows(produced):
    make_simplest(5)
    produced.clear()

    run_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{"id__in": [1, 2]}')

    assert sorted(p.pk for p in produced) == [1, 2]
    assert {p.signal_type for p in produced} == {SignalType.SYNC}


def test_sync_filter_matching_nothing_publishes_nothing(produced):
    make_simplest(2)
    produced.clear()

    run_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{"name": "nobody"}')

    assert produced == []


def test_sync_queue_none_is_a_broadcast(produced):
    make_simplest(2)
    produced.clear()

    run_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{}', '-q', 'None')

    assert [p.queue for p in produced] == [None, None]


def test_sync_queue_is_set_on_every_payload(produced):
    make_simplest(3)
    produced.clear()

    run_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{}', '-q', 'replica')

    assert len(produced) == 3
    assert {p.queue for p in produced} == {'replica'}
    assert {p.signal_type for p in produced} == {SignalType.SYNC}


def test_sync_skips_rows_that_are_not_sync_instances(produced):
    SometimesSyncedModel.objects.create(name='public one')
    SometimesSyncedModel.objects.create(name='private two')
    SometimesSyncedModel.objects.create(name='public three')
    produced.clear()

    run_command('cqrs_sync', '--cqrs-id', 'sometimes', '-f', '{}')

    assert sorted(p.instance_data['name'] for p in produced) == ['public one', 'public three']


def test_sync_batches_read_with_keyset_pagination(produced):
    make_simplest(5)
    produced.clear()

    with CaptureQueriesContext(connection) as ctx:
        run_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{}', '-b', '2')

    pages = page_selects(ctx.captured_queries, 'dj_master_simplestmodel')
    assert len(pages) >= 3, pages
    assert_keyset(master_selects(ctx.captured_queries, 'dj_master_simplestmodel'))
    assert all('LIMIT 2' in sql.upper() for sql in pages), pages
    # every row exactly once
    assert sorted(p.pk for p in produced) == [1, 2, 3, 4, 5]


def test_sync_batch_size_equal_to_row_count(produced):
    make_simplest(4)
    produced.clear()

    run_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{}', '-b', '2')

    assert sorted(p.pk for p in produced) == [1, 2, 3, 4]


def test_sync_batches_with_filter(produced):
    make_simplest(9)
    produced.clear()

    run_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{"id__gt": 3}', '-b', '2')

    assert sorted(p.pk for p in produced) == [4, 5, 6, 7, 8, 9]


def test_sync_serializer_model_reads_relations_per_batch_not_per_row(produced):
    for n in range(6):
        publisher = Publisher.objects.create(name=f'publisher {n}')
        Author.objects.create(id=n + 1, name=f'author {n}', publisher=publisher)
    Author.objects.create(id=7, name='no publisher')
    produced.clear()

    with CaptureQueriesContext(connection) as ctx:
        run_command('cqrs_sync', '--cqrs-id', 'author', '-f', '{}', '-b', '2')

    assert sorted(p.pk for p in produced) == [1, 2, 3, 4, 5, 6, 7]
    by_pk = {p.pk: p.instance_data for p in produced}
    assert by_pk[3]['publisher'] == {
        'id': Author.objects.get(id=3).publisher_id,
        'name': 'publisher 2',
    }
    assert by_pk[7]['publisher'] is None
    for author in Author.objects.all():
        assert by_pk[author.pk] == author.to_cqrs_dict()

    queries = ctx.captured_queries
    publisher_only = [
        sql
        for sql in master_selects(queries, 'dj_master_publisher')
        if '"dj_master_author"' not in sql
    ]
    assert publisher_only == [], 'publishers are read row by row, not joined per batch'
    pages = page_selects(queries, 'dj_master_author')
    # 7 rows by 2: 4 pages (one more empty page would be tolerable), never one per row + 1
    assert 4 <= len(pages) <= 5, pages
    assert all('JOIN' in sql.upper() for sql in pages), pages
    assert_keyset(pages)
    # the replica got them through the custom serialization path
    assert AuthorReplica.objects.count() == 7
    assert PublisherReplica.objects.count() == 6


def test_sync_uuid_pks(produced):
    pks = {UUIDPkModel.objects.create(name=f'u{n}').pk for n in range(5)}
    produced.clear()

    run_command('cqrs_sync', '--cqrs-id', 'uuid_pk', '-f', '{}', '-b', '2')

    assert len(produced) == 5
    assert sorted(p.to_dict()['instance_pk'] for p in produced) == sorted(str(pk) for pk in pks)
    assert all(isinstance(p.to_dict()['instance_pk'], str) for p in produced)


def test_sync_uuid_pk_filter(produced):
    rows = [UUIDPkModel.objects.create(name=f'u{n}') for n in range(3)]
    produced.clear()

    run_command('cqrs_sync', '--cqrs-id', 'uuid_pk', '-f', json.dumps({'id': str(rows[1].pk)}))

    assert [p.to_dict()['instance_pk'] for p in produced] == [str(rows[1].pk)]


def test_item_21_sync_progress_is_the_original_text_on_stdout(produced):
    make_simplest(5)
    produced.clear()

    out, err = run_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{}', '-p', '-b', '2')

    assert err == ''
    step = PROGRESS_STEP.replace('TOTAL', '5')
    pattern = (
        'Processing 5 records with batch size 2\n'
        + step.format(2, 40)
        + step.format(4, 80)
        + step.format(5, 100)
        + r'Done!\n5 instance\(s\) synced\.\n5 instance\(s\) processed\.\n'
    )
    assert re.fullmatch(pattern, out), repr(out)
    assert len(produced) == 5


def test_sync_without_progress_prints_only_the_summary(produced):
    make_simplest(3)
    out, err = run_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{}')
    assert (out, err) == ('Done!\n3 instance(s) synced.\n3 instance(s) processed.\n', '')


def test_item_21_sync_without_filter_syncs_nothing(produced):
    make_simplest(2)
    produced.clear()

    out, err = run_command('cqrs_sync', '--cqrs-id', 'simplest')

    assert (out, err) == ('No objects found for filter!\n', '')
    assert produced == []


def test_item_21_sync_of_a_model_that_does_not_produce_publishes_nothing(produced):
    NoProduceModel.objects.create(name='quiet')
    produced.clear()

    out, _ = run_command('cqrs_sync', '--cqrs-id', 'no_produce', '-f', '{}')

    # Counted as synced, as django-cqrs counts every row whose cqrs_sync did not raise.
    assert out == 'Done!\n1 instance(s) synced.\n1 instance(s) processed.\n'
    assert produced == []


@pytest.mark.parametrize(
    ('args', 'needle'),
    [
        (('--cqrs-id', 'nope', '-f', '{}'), 'nope'),
        (('--cqrs-id', 'simplest', '-f', '{"id": '), None),
        (('--cqrs-id', 'simplest', '-f', 'not json'), None),
        (('--cqrs-id', 'simplest', '-f', '[1, 2]'), None),
        (('--cqrs-id', 'simplest', '-f', '"id"'), None),
        (('--cqrs-id', 'simplest', '-f', '{"no_such_field": 1}'), 'no_such_field'),
        (('--cqrs-id', 'simplest', '-f', '{"id__no_such_lookup": 1}'), None),
        (('--cqrs-id', 'simplest', '-f', '{"id": "abc"}'), None),
        (('--cqrs-id', 'simplest', '-f', '{"id__in": 5}'), None),
        (('-f', '{}'), None),
        (('--cqrs-id', 'simplest', '-f', '{}', '-b', '0'), None),
        (('--cqrs-id', 'simplest', '-f', '{}', '-b', '-3'), None),
        (('--cqrs-id', 'locked', '-f', '{}'), 'locked'),  # a replica-only CQRS_ID
    ],
    ids=[
        'unknown-id',
        'truncated-json',
        'not-json',
        'json-list',
        'json-string',
        'unknown-field',
        'unknown-lookup',
        'bad-value',
        'in-not-a-list',
        'missing-cqrs-id',
        'batch-zero',
        'batch-negative',
        'replica-only-id',
    ],
)
def test_sync_bad_input_is_a_one_line_command_error(produced, args, needle):
    make_simplest(2)
    NoProduceModel.objects.create(name='quiet')
    produced.clear()

    message = command_error('cqrs_sync', *args)

    if needle:
        assert needle in message
    assert produced == []


# --------------------------------------------------------------------------------------------
# cqrs_bulk_dump


def read_dump(text: str) -> tuple[str, list[dict]]:
    lines = text.splitlines()
    return lines[0], [json.loads(line) for line in lines[1:] if line.strip()]


def test_dump_to_default_file_in_cwd(offline, tmp_path, monkeypatch):
    rows = make_simplest(3, bump={2: 3})
    monkeypatch.chdir(tmp_path)

    out, _ = run_command('cqrs_bulk_dump', '--cqrs-id', 'simplest')

    assert out == ''
    assert sorted(p.name for p in tmp_path.iterdir()) == ['simplest.dump']
    text = (tmp_path / 'simplest.dump').read_text(encoding='utf-8')
    assert not text.endswith('\n')
    header, body = read_dump(text)
    assert header == 'simplest'
    assert body == [row.to_cqrs_dict() for row in rows]
    assert body[1]['cqrs_revision'] == 3


def test_dump_first_line_is_exactly_the_cqrs_id(offline, tmp_path):
    make_simplest(1)
    path = tmp_path / 'x.dump'
    run_command('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', str(path))
    assert path.read_text(encoding='utf-8').split('\n', 1)[0] == 'simplest'


def test_dump_empty_table_is_only_the_header(offline, tmp_path):
    path = tmp_path / 'empty.dump'
    run_command('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', str(path))
    assert path.read_text(encoding='utf-8').strip() == 'simplest'


def test_dump_all_value_types(offline, tmp_path):
    make_auto_fields()
    path = tmp_path / 'auto.dump'

    run_command('cqrs_bulk_dump', '--cqrs-id', 'auto_fields', '-o', str(path))

    header, body = read_dump(path.read_text(encoding='utf-8'))
    assert header == 'auto_fields'
    assert body == [
        ujson.loads(ujson.dumps(row.to_cqrs_dict()))
        for row in AutoFieldsModel.objects.order_by('pk')
    ]
    assert body[0]['amount'] == 12345678.9  # decimals are JSON numbers, as django-cqrs writes
    assert body[0]['token'] == '12345678-1234-5678-1234-567812345678'
    assert body[0]['name'] == 'Ünïcødé "quoted" / slash \\ back'


def test_dump_cqrs_fields_and_serializer(offline, tmp_path):
    FilteredModel.objects.create(name='f1', secret='s1')
    publisher = Publisher.objects.create(name='pub')
    Author.objects.create(id=1, name='a1', publisher=publisher)
    Author.objects.create(id=2, name='a2')

    run_command('cqrs_bulk_dump', '--cqrs-id', 'filtered', '-o', str(tmp_path / 'f.dump'))
    run_command('cqrs_bulk_dump', '--cqrs-id', 'author', '-o', str(tmp_path / 'a.dump'))

    _, filtered = read_dump((tmp_path / 'f.dump').read_text(encoding='utf-8'))
    assert filtered == [FilteredModel.objects.get().to_cqrs_dict()]
    assert 'secret' not in filtered[0]
    _, authors = read_dump((tmp_path / 'a.dump').read_text(encoding='utf-8'))
    assert authors == [a.to_cqrs_dict() for a in Author.objects.order_by('pk')]
    assert authors[0]['publisher'] == {'id': publisher.pk, 'name': 'pub'}


def test_dump_refuses_to_overwrite_without_force(offline, tmp_path, monkeypatch):
    make_simplest(2)
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'simplest.dump').write_text('precious\n')

    message = command_error('cqrs_bulk_dump', '--cqrs-id', 'simplest')

    assert 'simplest.dump' in message
    assert (tmp_path / 'simplest.dump').read_text() == 'precious\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['simplest.dump']


def test_dump_overwrites_with_force(offline, tmp_path):
    rows = make_simplest(2)
    path = tmp_path / 'out.dump'
    path.write_text('precious\n')

    run_command('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', str(path), '-f')

    header, body = read_dump(path.read_text(encoding='utf-8'))
    assert header == 'simplest'
    assert body == [row.to_cqrs_dict() for row in rows]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.dump']


def test_dump_to_stdout(offline, tmp_path, monkeypatch):
    rows = make_simplest(3)
    monkeypatch.chdir(tmp_path)

    out, err = run_command('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', '-')

    header, body = read_dump(out)
    assert header == 'simplest'
    assert body == [row.to_cqrs_dict() for row in rows]
    assert not err.startswith('simplest')
    assert list(tmp_path.iterdir()) == []


def test_dump_to_stdout_with_progress_keeps_stdout_clean(offline):
    rows = make_simplest(4)

    out, err = run_command('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', '-', '-p', '-b', '3')

    header, body = read_dump(out)
    assert header == 'simplest'
    assert body == [row.to_cqrs_dict() for row in rows]
    step = PROGRESS_STEP.replace('TOTAL', '4')
    pattern = (
        'Processing 4 records with batch size 3\n'
        + step.format(3, 75)
        + step.format(4, 100)
        + r'Done!\n4 instance\(s\) saved\.\n4 instance\(s\) processed\.\n'
    )
    assert re.fullmatch(pattern, err), repr(err)


@pytest.mark.parametrize('cqrs_id', ['nope', 'locked'])
def test_dump_unknown_cqrs_id_creates_no_file(offline, tmp_path, monkeypatch, cqrs_id):
    monkeypatch.chdir(tmp_path)

    message = command_error('cqrs_bulk_dump', '--cqrs-id', cqrs_id)
    command_error('cqrs_bulk_dump', '--cqrs-id', cqrs_id, '-o', str(tmp_path / 'x.dump'))

    assert cqrs_id in message
    assert list(tmp_path.iterdir()) == []


def test_dump_bad_batch_creates_no_file(offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_simplest(1)
    command_error('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-b', '0')
    assert list(tmp_path.iterdir()) == []


def test_dump_into_missing_directory_is_a_command_error(offline, tmp_path):
    make_simplest(1)
    command_error('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', str(tmp_path / 'no' / 'x'))
    assert list(tmp_path.iterdir()) == []


def test_item_22_dump_row_that_fails_is_reported_and_skipped(offline, tmp_path, monkeypatch):
    rows = make_simplest(6)
    path = tmp_path / 'out.dump'
    original = SimplestModel.to_cqrs_dict

    def to_cqrs_dict(self, *args, **kwargs):
        if self.pk == 5:
            raise RuntimeError('serialization failed')
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SimplestModel, 'to_cqrs_dict', to_cqrs_dict)

    out, err = run_command('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', str(path), '-b', '2')

    assert out == ''
    assert err == (
        '\nDump record failed for pk=5: RuntimeError: serialization failed\n'
        'Done!\n5 instance(s) saved.\n6 instance(s) processed.\n'
    )
    header, body = read_dump(path.read_text(encoding='utf-8'))
    assert [row['id'] for row in body] == [1, 2, 3, 4, 6]
    assert body[0] == rows[0].to_cqrs_dict()


def test_dump_failing_midway_leaves_no_partial_file(offline, tmp_path, monkeypatch):
    make_simplest(6)
    path = tmp_path / 'out.dump'
    path.write_text('previous dump\n')
    original = SimplestModel.to_cqrs_dict

    def to_cqrs_dict(self, *args, **kwargs):
        if self.pk == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SimplestModel, 'to_cqrs_dict', to_cqrs_dict)

    with pytest.raises(KeyboardInterrupt):
        run_command('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', str(path), '-f', '-b', '2')

    assert path.read_text() == 'previous dump\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.dump']


def test_dump_batches_with_keyset_pagination(offline, tmp_path):
    rows = make_simplest(7)
    path = tmp_path / 'b.dump'

    with CaptureQueriesContext(connection) as ctx:
        run_command('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', str(path), '-b', '2')

    pages = page_selects(ctx.captured_queries, 'dj_master_simplestmodel')
    assert len(pages) >= 4, pages
    assert all('LIMIT 2' in sql.upper() for sql in pages), pages
    assert_keyset(master_selects(ctx.captured_queries, 'dj_master_simplestmodel'))
    _, body = read_dump(path.read_text(encoding='utf-8'))
    assert body == [row.to_cqrs_dict() for row in rows]


def test_dump_serializer_model_one_query_per_batch(offline, tmp_path):
    for n in range(5):
        Author.objects.create(
            id=n + 1, name=f'a{n}', publisher=Publisher.objects.create(name=f'p{n}')
        )

    with CaptureQueriesContext(connection) as ctx:
        run_command(
            'cqrs_bulk_dump', '--cqrs-id', 'author', '-o', str(tmp_path / 'a.dump'), '-b', '2'
        )

    queries = ctx.captured_queries
    assert [
        sql
        for sql in master_selects(queries, 'dj_master_publisher')
        if '"dj_master_author"' not in sql
    ] == []
    pages = page_selects(queries, 'dj_master_author')
    assert 3 <= len(pages) <= 4, pages
    assert_keyset(pages)


# --------------------------------------------------------------------------------------------
# cqrs_bulk_load


def dump_to(path, cqrs_id: str) -> None:
    run_command('cqrs_bulk_dump', '--cqrs-id', cqrs_id, '-o', str(path), '-f')


def test_load_file_gives_identical_replica_table(offline, tmp_path):
    make_simplest(6, bump={1: 1, 4: 5})
    SimplestModel.objects.create(id=100, name=None)
    path = tmp_path / 'simplest.dump'
    dump_to(path, 'simplest')
    assert SimplestReplica.objects.count() == 0

    out, _ = run_command('cqrs_bulk_load', '-i', str(path))

    assert out == ''
    assert simplest_replica_rows() == simplest_master_rows()
    assert SimplestReplica.objects.get(id=4).cqrs_revision == 5


def test_load_from_stdin(offline, tmp_path):
    make_simplest(4, bump={3: 2})
    path = tmp_path / 'simplest.dump'
    dump_to(path, 'simplest')

    run_command('cqrs_bulk_load', '-i', '-', stdin=path.read_text(encoding='utf-8'))

    assert simplest_replica_rows() == simplest_master_rows()


def test_load_stdin_without_trailing_newline(offline):
    text = '\n'.join(['simplest', simplest_line(1, 'a'), simplest_line(2, 'b')])
    run_command('cqrs_bulk_load', '-i', '-', stdin=text)
    assert sorted(SimplestReplica.objects.values_list('id', 'name')) == [(1, 'a'), (2, 'b')]


def test_load_all_value_types(offline, tmp_path):
    make_auto_fields()
    path = tmp_path / 'auto.dump'
    dump_to(path, 'auto_fields')

    run_command('cqrs_bulk_load', '-i', str(path))

    master = list(AutoFieldsModel.objects.order_by('pk').values_list(*AUTO_FIELDS))
    replica = list(AutoFieldsReplica.objects.order_by('pk').values_list(*AUTO_FIELDS))
    assert replica == master
    assert len(replica) == 3


def test_load_mapped_replica(offline, tmp_path):
    for n in range(3):
        FilteredModel.objects.create(name=f'f{n}', secret='never sent')
    row = FilteredModel.objects.get(name='f1')
    row.name = 'f1 renamed'
    row.save()
    path = tmp_path / 'filtered.dump'
    dump_to(path, 'filtered')

    run_command('cqrs_bulk_load', '-i', str(path))

    assert list(
        MappedReplica.objects.order_by('pk').values_list(
            'remote_id', 'title', 'cqrs_revision', 'cqrs_updated'
        )
    ) == list(
        FilteredModel.objects.order_by('pk').values_list(
            'id', 'name', 'cqrs_revision', 'cqrs_updated'
        )
    )


def test_load_custom_serialization_row_by_row(offline, tmp_path):
    first = Publisher.objects.create(name='first')
    second = Publisher.objects.create(name='second')
    Author.objects.create(id=1, name='a1', publisher=first)
    Author.objects.create(id=2, name='a2', publisher=second)
    Author.objects.create(id=3, name='a3', publisher=first)
    Author.objects.create(id=4, name='a4')
    author = Author.objects.get(id=2)
    author.name = 'a2 v2'
    author.save()
    path = tmp_path / 'author.dump'
    dump_to(path, 'author')

    run_command('cqrs_bulk_load', '-i', str(path), '-b', '3')

    assert list(
        AuthorReplica.objects.order_by('pk').values_list(
            'id', 'name', 'publisher_id', 'cqrs_revision', 'cqrs_updated'
        )
    ) == list(
        Author.objects.order_by('pk').values_list(
            'id', 'name', 'publisher_id', 'cqrs_revision', 'cqrs_updated'
        )
    )
    assert sorted(PublisherReplica.objects.values_list('id', 'name')) == [
        (first.pk, 'first'),
        (second.pk, 'second'),
    ]


def test_load_clear_flag_removes_rows_not_in_dump(offline, tmp_path):
    make_simplest(3)
    path = tmp_path / 'simplest.dump'
    dump_to(path, 'simplest')
    run_command('cqrs_bulk_load', '-i', str(path))
    SimplestReplica.objects.create(id=999, name='orphan', cqrs_revision=0, cqrs_updated=NOW)

    run_command('cqrs_bulk_load', '-c', '-i', str(path))

    assert simplest_replica_rows() == simplest_master_rows()


@pytest.mark.parametrize(
    'args',
    [
        ('-c', '-i', 'PATH'),
        ('-i', 'PATH', '-c'),
        ('--clear', '-i', 'PATH'),
        ('--clear=true', '-i', 'PATH'),
        ('-c', 'True', '-i', 'PATH'),
        ('-i', 'PATH', '--clear=1'),
    ],
    ids=['c-first', 'c-last', 'long', 'long-value', 'short-value', 'value-last'],
)
def test_item_23_load_clear_with_or_without_a_value(offline, tmp_path, args):
    make_simplest(2)
    path = tmp_path / 'simplest.dump'
    dump_to(path, 'simplest')
    SimplestReplica.objects.create(id=50, name='orphan', cqrs_revision=3, cqrs_updated=NOW)

    run_command('cqrs_bulk_load', *[str(path) if a == 'PATH' else a for a in args])

    assert simplest_replica_rows() == simplest_master_rows()


def test_load_without_clear_keeps_other_rows(offline, tmp_path):
    make_simplest(2)
    path = tmp_path / 'simplest.dump'
    dump_to(path, 'simplest')
    SimplestReplica.objects.create(id=50, name='kept', cqrs_revision=3, cqrs_updated=NOW)

    run_command('cqrs_bulk_load', '-i', str(path))

    assert SimplestReplica.objects.filter(id=50, name='kept').exists()
    assert SimplestReplica.objects.count() == 3


def test_load_header_only_with_clear_empties_the_table(offline, tmp_path):
    path = tmp_path / 'simplest.dump'
    dump_to(path, 'simplest')  # empty master table
    SimplestReplica.objects.create(id=7, name='gone', cqrs_revision=0, cqrs_updated=NOW)

    run_command('cqrs_bulk_load', '-c', '-i', str(path))

    assert SimplestReplica.objects.count() == 0


def test_load_never_downgrades_a_newer_replica_row(offline, tmp_path):
    make_simplest(3, bump={2: 1})
    path = tmp_path / 'simplest.dump'
    dump_to(path, 'simplest')
    run_command('cqrs_bulk_load', '-i', str(path))
    SimplestReplica.objects.filter(id=2).update(cqrs_revision=7, name='newer on replica')
    before = SimplestReplica.objects.get(id=2)

    run_command('cqrs_bulk_load', '-i', str(path))

    after = SimplestReplica.objects.get(id=2)
    assert (after.name, after.cqrs_revision, after.cqrs_updated) == (
        'newer on replica',
        7,
        before.cqrs_updated,
    )
    assert SimplestReplica.objects.count() == 3


def test_load_never_downgrades_on_the_row_by_row_path(offline, tmp_path):
    Author.objects.create(id=1, name='a1', publisher=Publisher.objects.create(name='p'))
    Author.objects.create(id=2, name='a2')
    path = tmp_path / 'author.dump'
    dump_to(path, 'author')
    run_command('cqrs_bulk_load', '-i', str(path))
    AuthorReplica.objects.filter(id=1).update(cqrs_revision=4, name='newer', publisher=None)

    run_command('cqrs_bulk_load', '-i', str(path))

    assert list(
        AuthorReplica.objects.order_by('pk').values_list(
            'id', 'name', 'publisher_id', 'cqrs_revision'
        )
    ) == [(1, 'newer', None, 4), (2, 'a2', None, 0)]


def test_load_upgrades_an_older_replica_row(offline, tmp_path):
    make_simplest(3, bump={1: 4})
    path = tmp_path / 'simplest.dump'
    dump_to(path, 'simplest')
    run_command('cqrs_bulk_load', '-i', str(path))
    SimplestReplica.objects.filter(id=1).update(cqrs_revision=1, name='stale')

    run_command('cqrs_bulk_load', '-i', str(path))

    assert simplest_replica_rows() == simplest_master_rows()


@pytest.mark.parametrize('batch', [None, '1', '2', '3'])
def test_load_reports_bad_lines_and_loads_the_rest(offline, tmp_path, batch):
    path = tmp_path / 'bad.dump'
    write_dump(
        path,
        'simplest',
        simplest_line(1, 'one'),  # line 2
        'this is not json',  # line 3
        '[1, 2, 3]',  # line 4
        json.dumps({'id': 4, 'name': 'no rev', 'cqrs_updated': '2024-01-01 00:00:00+00:00'}),
        simplest_line(5, 'five', 2),  # line 6
        '{"id": 6, "name": ',  # line 7: truncated
        simplest_line(8, 'eight'),  # line 8
    )

    _, err = run_command('cqrs_bulk_load', '-i', str(path), *(('-b', batch) if batch else ()))

    assert sorted(SimplestReplica.objects.values_list('id', 'name', 'cqrs_revision')) == [
        (1, 'one', 0),
        (5, 'five', 2),
        (8, 'eight', 0),
    ]
    reported = {int(n) for n in re.findall(r'[Ll]ine (\d+)', err)}
    assert reported == {3, 4, 5, 7}, err


def test_load_bad_lines_from_stdin_are_reported(offline):
    text = '\n'.join(['simplest', simplest_line(1, 'one'), '{oops', simplest_line(2, 'two')])

    _, err = run_command('cqrs_bulk_load', '-i', '-', stdin=text + '\n')

    assert sorted(SimplestReplica.objects.values_list('id', flat=True)) == [1, 2]
    assert {int(n) for n in re.findall(r'[Ll]ine (\d+)', err)} == {3}, err


def test_item_23_load_blank_lines_are_unparseable_lines(offline, tmp_path):
    path = tmp_path / 'blank.dump'
    write_dump(path, 'simplest', simplest_line(1, 'one'), '', '   ', simplest_line(2, 'two'))

    _, err = run_command('cqrs_bulk_load', '-i', str(path))

    assert SimplestReplica.objects.count() == 2
    assert err == (
        "Dump file can't be parsed: line 3!\n"
        "Dump file can't be parsed: line 4!\n"
        'Done!\n2 instance(s) loaded.\n'
    )


def _seed_replica() -> None:
    SimplestReplica.objects.create(id=1, name='existing', cqrs_revision=0, cqrs_updated=NOW)


def test_load_missing_file_is_a_command_error(offline, tmp_path):
    _seed_replica()
    message = command_error('cqrs_bulk_load', '-c', '-i', str(tmp_path / 'missing.dump'))
    assert 'missing.dump' in message
    assert list(SimplestReplica.objects.values_list('id', 'name')) == [(1, 'existing')]


def test_load_empty_file_is_a_command_error(offline, tmp_path):
    _seed_replica()
    path = tmp_path / 'empty.dump'
    path.write_text('')
    command_error('cqrs_bulk_load', '-c', '-i', str(path))
    assert list(SimplestReplica.objects.values_list('id', 'name')) == [(1, 'existing')]


def test_load_empty_stdin_is_a_command_error(offline):
    _seed_replica()
    command_error('cqrs_bulk_load', '-c', '-i', '-', stdin='')
    assert SimplestReplica.objects.count() == 1


@pytest.mark.parametrize('header', ['nope', 'unknown_model', 'no_produce'])
def test_load_unknown_cqrs_id_in_header_writes_nothing(offline, tmp_path, header):
    _seed_replica()
    path = tmp_path / 'x.dump'
    write_dump(path, header, simplest_line(2, 'two'))

    message = command_error('cqrs_bulk_load', '-c', '-i', str(path))

    assert header in message
    assert list(SimplestReplica.objects.values_list('id', 'name')) == [(1, 'existing')]


def test_load_missing_input_option_is_a_command_error(offline):
    command_error('cqrs_bulk_load')


def test_load_bad_batch_is_a_command_error_and_writes_nothing(offline, tmp_path):
    _seed_replica()
    path = tmp_path / 'x.dump'
    write_dump(path, 'simplest', simplest_line(2, 'two'))
    command_error('cqrs_bulk_load', '-c', '-i', str(path), '-b', '0')
    assert list(SimplestReplica.objects.values_list('id', 'name')) == [(1, 'existing')]


class CommitCounter:
    def __init__(self, monkeypatch):
        self.count = 0
        original = connection.commit

        def commit():
            self.count += 1
            return original()

        monkeypatch.setattr(connection, 'commit', commit)


def test_load_batches_are_separate_transactions(offline, tmp_path, monkeypatch):
    make_simplest(5)
    path = tmp_path / 'simplest.dump'
    dump_to(path, 'simplest')
    counter = CommitCounter(monkeypatch)

    run_command('cqrs_bulk_load', '-i', str(path), '-b', '2')

    assert counter.count == 3
    assert simplest_replica_rows() == simplest_master_rows()


def test_load_default_batch_is_one_transaction(offline, tmp_path, monkeypatch):
    make_simplest(5)
    path = tmp_path / 'simplest.dump'
    dump_to(path, 'simplest')
    counter = CommitCounter(monkeypatch)

    run_command('cqrs_bulk_load', '-i', str(path))

    assert counter.count == 1
    assert simplest_replica_rows() == simplest_master_rows()


def test_load_progress_bar_only_on_a_terminal(offline, tmp_path, monkeypatch):
    make_simplest(5)
    path = tmp_path / 'simplest.dump'
    dump_to(path, 'simplest')

    out, err = run_command('cqrs_bulk_load', '-i', str(path), '-p', '-b', '2')

    assert out == ''
    assert err == 'Done!\n5 instance(s) loaded.\n'
    assert simplest_replica_rows() == simplest_master_rows()

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    with mock.patch.object(sys, 'stderr', terminal):
        call_command('cqrs_bulk_load', '-i', str(path), '-p', '-b', '2', stderr=io.StringIO())
    assert '5 rows' in terminal.getvalue()


def test_load_into_a_replica_that_is_not_a_django_model(offline, tmp_path):
    path = tmp_path / 'raw.dump'
    write_dump(path, 'raw', simplest_line(1, 'a'), simplest_line(2, 'b'))

    run_command('cqrs_bulk_load', '-i', str(path))

    assert sorted(RawReplica.STORE) == [1, 2]
    assert RawReplica.STORE[2]['data']['name'] == 'b'


def test_load_clear_of_a_replica_without_table_is_a_command_error(offline, tmp_path):
    # RawReplicaMixin: there is no table to clear; a one-line error, not an AttributeError.
    path = tmp_path / 'raw.dump'
    write_dump(path, 'raw', simplest_line(1, 'a'))

    command_error('cqrs_bulk_load', '-c', '-i', str(path))

    assert RawReplica.STORE == {}


def test_load_batches_with_duplicate_pks_in_one_batch(offline, tmp_path):
    path = tmp_path / 'dup.dump'
    write_dump(
        path,
        'simplest',
        simplest_line(1, 'first', 0),
        simplest_line(1, 'second', 1),
        simplest_line(2, 'two', 0),
    )

    run_command('cqrs_bulk_load', '-i', str(path), '-b', '10')

    assert sorted(SimplestReplica.objects.values_list('id', 'name', 'cqrs_revision')) == [
        (1, 'second', 1),
        (2, 'two', 0),
    ]


# --------------------------------------------------------------------------------------------
# round trips


def test_round_trip_through_a_file(offline, tmp_path, monkeypatch):
    make_simplest(12, bump={3: 1, 7: 2, 12: 9})
    monkeypatch.chdir(tmp_path)

    run_command('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-b', '5')
    run_command('cqrs_bulk_load', '-i', 'simplest.dump', '-b', '5')

    assert simplest_replica_rows() == simplest_master_rows()


def test_round_trip_through_stdout_and_stdin(offline):
    make_simplest(12, bump={5: 3})
    SimplestReplica.objects.create(id=500, name='orphan', cqrs_revision=0, cqrs_updated=NOW)

    dumped, _ = run_command('cqrs_bulk_dump', '--cqrs-id', 'simplest', '-o', '-', '-b', '4')
    run_command('cqrs_bulk_load', '-i', '-', '-c', '-b', '4', stdin=dumped)

    assert simplest_replica_rows() == simplest_master_rows()


def test_round_trip_all_value_types_through_stdin(offline):
    make_auto_fields()

    dumped, _ = run_command('cqrs_bulk_dump', '--cqrs-id', 'auto_fields', '-o', '-')
    run_command('cqrs_bulk_load', '-i', '-', stdin=dumped)

    assert list(AutoFieldsReplica.objects.order_by('pk').values_list(*AUTO_FIELDS)) == list(
        AutoFieldsModel.objects.order_by('pk').values_list(*AUTO_FIELDS)
    )


def test_round_trip_uuid_pks(offline):
    for n in range(4):
        UUIDPkModel.objects.create(name=f'u{n}')

    dumped, _ = run_command('cqrs_bulk_dump', '--cqrs-id', 'uuid_pk', '-o', '-', '-b', '3')
    run_command('cqrs_bulk_load', '-i', '-', stdin=dumped)

    fields = ('id', 'name', 'cqrs_revision', 'cqrs_updated')
    assert list(UUIDReplica.objects.order_by('pk').values_list(*fields)) == list(
        UUIDPkModel.objects.order_by('pk').values_list(*fields)
    )
