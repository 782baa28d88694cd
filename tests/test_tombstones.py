"""Issue 11, item 4: no resurrected rows. A DELETE leaves a tombstone on the replica; later data
of the deleted row that is not newer is dropped; a row the master creates again applies.

In process, on the test database (SQLite, or PostgreSQL with ``--ds=tests.settings_pg``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
import ujson
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dj_cqrs import tombstones
from dj_cqrs.apps import validate_settings
from dj_cqrs.conf import CQRSConfigurationError, cqrs_settings
from dj_cqrs.constants import SignalType
from dj_cqrs.controller import consumer
from dj_cqrs.models import CQRSTombstone
from dj_cqrs.transport import _consuming
from dj_cqrs.transport.loopback import LoopbackTransport
from tests.dj_master.models import SimplestModel
from tests.dj_replica.models import (
    RECORDED,
    MappedReplica,
    SimplestReplica,
    TrackedReplica,
    UUIDReplica,
)
from tests.harness import instance_data, payload, run_command

T0 = '2024-05-01 10:00:00.000000+00:00'  # the row's saves
T1 = '2024-05-01 10:00:05.000000+00:00'  # its deletion on the master
T2 = '2024-05-01 11:00:00.000000+00:00'  # created again on the master
DROPPED = 'CQRS data of a deleted instance is dropped'


def save(pk, rev, updated=T0, cqrs_id='simplest', signal_type=SignalType.SAVE, **fields):
    """A SAVE (or ``signal_type``) of row ``pk`` named after its pk, revision and time."""
    fields = {'name': f'{pk} r{rev} {updated[11:19]}', **fields}
    return payload(signal_type, cqrs_id, instance_data(pk, rev, updated, **fields))


def sync(pk, rev, updated=T0, cqrs_id='simplest'):
    return save(pk, rev, updated, cqrs_id, SignalType.SYNC)


def delete(pk, rev, updated=T1, cqrs_id='simplest'):
    return payload(SignalType.DELETE, cqrs_id, instance_data(pk, rev, updated))


def apply(*payloads):
    return [consumer.consume(payload) for payload in payloads]


def stored_names(model=SimplestReplica):
    return dict(model._default_manager.values_list('pk', 'name'))


def graves(using='default'):
    return sorted(
        (t.cqrs_id, t.instance_pk, t.cqrs_revision, str(t.cqrs_updated))
        for t in CQRSTombstone.objects.using(using)
    )


def dropped(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(DROPPED)]


def ttl(settings, value):
    settings.CQRS = {
        **settings.CQRS,
        'replica': {**settings.CQRS['replica'], 'tombstone_ttl': value},
    }


@pytest.fixture(autouse=True)
def _logs(caplog):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')


# --- one message at a time ---------------------------------------------------------------------


@pytest.mark.django_db
def test_item_04_delete_then_late_save_and_sync_stay_deleted(caplog):
    assert all(apply(save(1, 0), save(1, 1), delete(1, 2)))
    assert graves() == [('simplest', '1', 2, '2024-05-01 10:00:05+00:00')]

    assert all(apply(save(1, 1), sync(1, 1), save(1, 2, T1)))

    assert stored_names() == {}
    assert dropped(caplog) == [
        f'{DROPPED}: pk = 1, cqrs_revision = new 1 / deleted 2, cqrs_updated = new {T0} / '
        'deleted 2024-05-01 10:00:05+00:00 (simplest).',
        f'{DROPPED}: pk = 1, cqrs_revision = new 1 / deleted 2, cqrs_updated = new {T0} / '
        'deleted 2024-05-01 10:00:05+00:00 (simplest).',
        f'{DROPPED}: pk = 1, cqrs_revision = new 2 / deleted 2, cqrs_updated = new {T1} / '
        'deleted 2024-05-01 10:00:05+00:00 (simplest).',
    ]


@pytest.mark.django_db
def test_item_04_row_created_again_applies_and_clears_the_tombstone():
    apply(save(1, 0), delete(1, 1))

    assert apply(save(1, 0, T2))[0]
    assert stored_names() == {1: '1 r0 11:00:00'}
    assert graves() == []
    # From then on, the revision rules alone.
    apply(save(1, 1, T2), save(1, 0, T0))
    assert stored_names() == {1: '1 r1 11:00:00'}


@pytest.mark.django_db
def test_item_04_delete_before_the_create_keeps_the_row_deleted():
    # Two workers: the DELETE of a new row overtakes its creation.
    assert apply(delete(5, 1), save(5, 0)) == [True, True]
    assert stored_names() == {}


@pytest.mark.django_db
def test_item_04_a_dropped_save_calls_no_hook():
    apply(save(1, 0, cqrs_id='tracked'), delete(1, 1, cqrs_id='tracked'))
    RECORDED.clear()

    assert apply(save(1, 0, cqrs_id='tracked'), sync(1, 0, cqrs_id='tracked'))
    assert RECORDED == []
    assert stored_names(TrackedReplica) == {}

    apply(save(1, 0, T2, cqrs_id='tracked'))
    assert [r['cqrs_id'] for r in RECORDED] == ['tracked']


@pytest.mark.django_db
def test_item_04_a_late_older_delete_keeps_the_latest_tombstone():
    apply(delete(1, 5, T2), delete(1, 2, T1))
    assert graves() == [('simplest', '1', 5, '2024-05-01 11:00:00+00:00')]


@pytest.mark.django_db
def test_item_04_pk_spelling_and_mapping_give_the_same_tombstone():
    pk = uuid.UUID(int=7)
    apply(delete(pk.hex, 1, cqrs_id='uuid_pk'), save(str(pk), 0, cqrs_id='uuid_pk'))
    assert stored_names(UUIDReplica) == {}
    assert graves() == [('uuid_pk', str(pk), 1, '2024-05-01 10:00:05+00:00')]

    # CQRS_MAPPING: the DELETE names the master pk 'id', the replica pk is remote_id.
    apply(delete(3, 1, cqrs_id='filtered'), save(3, 0, cqrs_id='filtered'))
    assert not MappedReplica.objects.exists()


@pytest.mark.parametrize(
    ('new', 'stale'),
    [
        ((1, T0), True),  # older revision, older date
        ((2, T1), True),  # as old as the deletion
        ((0, T2), False),  # created again: revision restarted, later date
        ((3, T0), False),  # a newer revision than the deletion's
        ((None, T0), True),  # unreadable revision: not newer
        ((1, None), True),
        ((0, None), True),
    ],
)
def test_item_04_the_stale_rule(new, stale):
    def at(value):
        return None if value is None else datetime.fromisoformat(value)

    tombstone = tombstones.Mark(2, at(T1))
    assert tombstones.is_stale(tombstones.Mark(new[0], at(new[1])), tombstone) is stale


@pytest.mark.django_db
def test_item_04_delete_without_readable_values(caplog):
    # Neither value readable: the row is deleted, no tombstone (nothing to compare with).
    apply(save(1, 0), delete(1, 'x', 'not a date'))
    assert stored_names() == {} and graves() == []

    # Only the revision: it alone decides (a row created again is kept out until the purge).
    apply(save(2, 0), delete(2, 1, 'not a date'))
    assert graves() == [('simplest', '2', 1, 'None')]
    apply(save(2, 0, T2), save(2, 2, T0))
    assert stored_names() == {2: '2 r2 10:00:00'}


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_04_tombstone_is_written_on_the_database_of_the_replica_rows():
    manager = SimplestReplica.cqrs.db_manager('other')
    manager.save_instance({'id': 1, 'name': 'a', 'cqrs_revision': 0, 'cqrs_updated': T0})
    assert manager.delete_instance({'id': 1, 'cqrs_revision': 1, 'cqrs_updated': T1})

    assert graves('other') == [('simplest', '1', 1, '2024-05-01 10:00:05+00:00')]
    assert graves('default') == []
    assert manager.save_instance({'id': 1, 'name': 'a', 'cqrs_revision': 0, 'cqrs_updated': T0})
    assert not SimplestReplica.objects.using('other').exists()


# --- the batched path ----------------------------------------------------------------------------


def mixed(n):
    """n rows: created, deleted, saved late, some created again; then late SYNCs."""
    payloads = [save(pk, 0) for pk in range(n)]
    payloads += [delete(pk, 1) for pk in range(n)]
    payloads += [save(pk, 0) for pk in range(n)]
    payloads += [save(pk, 0, T2) for pk in range(0, n, 2)]
    payloads += [sync(pk, 0) for pk in range(n)]
    payloads += [delete(pk, 9) for pk in range(n, n + n // 2)]  # rows never seen
    return payloads


@pytest.mark.django_db
@pytest.mark.parametrize('n', [10, 300])
def test_item_04_batch_reads_and_writes_tombstones_with_a_bounded_number_of_queries(
    n, django_assert_max_num_queries
):
    # Rows 0..n-1 stored, with old tombstones of the odd ones from an earlier life.
    CQRSTombstone.objects.bulk_create(
        CQRSTombstone(
            cqrs_id='simplest',
            instance_pk=str(pk),
            cqrs_revision=0,
            cqrs_updated=datetime(2020, 1, 1, tzinfo=dt_timezone.utc),
            created=timezone.now(),
        )
        for pk in range(1, n, 2)
    )
    with django_assert_max_num_queries(12):
        outcomes = consumer.consume_batch(mixed(n))

    assert all(result for result, exc in outcomes)
    assert sorted(stored_names()) == list(range(0, n, 2))
    assert len(graves()) == n // 2 + n // 2  # the odd rows and the rows never seen


@pytest.mark.django_db
def test_item_04_batch_and_one_by_one_leave_the_same_rows_tombstones_and_logs(caplog):
    states = []
    for run in ('one by one', 'batch'):
        SimplestReplica.objects.all().delete()
        CQRSTombstone.objects.all().delete()
        caplog.clear()
        payloads = mixed(6)
        if run == 'batch':
            assert [exc for _, exc in consumer.consume_batch(payloads)] == [None] * len(payloads)
        else:
            assert all(apply(*payloads))
        lines = [r.getMessage() for r in caplog.records if 'one by one' not in r.getMessage()]
        states.append((stored_names(), graves(), [line for line in lines if 'CQRS' in line]))
    assert states[0] == states[1]
    assert len(dropped(caplog)) == 6 + 3  # the late SAVEs, the SYNCs of the deleted rows


# --- the setting, the purge --------------------------------------------------------------------


def test_item_04_setting_default_and_validation(settings):
    assert cqrs_settings.replica.tombstone_ttl == 86400
    ttl(settings, None)
    assert not tombstones.enabled()
    ttl(settings, '3600')
    assert cqrs_settings.replica.tombstone_ttl == 3600
    for bad in ('soon', -1, [1]):
        ttl(settings, bad)
        with pytest.raises(CQRSConfigurationError, match=r"CQRS\['replica'\]\['tombstone_ttl'\]"):
            validate_settings()


@pytest.mark.django_db
@pytest.mark.parametrize('value', [None, 0])
def test_item_04_ttl_off_behaves_as_before(settings, value):
    ttl(settings, value)
    with CaptureQueriesContext(connection) as queries:
        apply(save(1, 0), delete(1, 1), save(1, 0))
        consumer.consume_batch([save(2, 0), delete(2, 1), save(2, 0), delete(3, 1)])

    assert stored_names() == {1: '1 r0 10:00:00', 2: '2 r0 10:00:00'}  # resurrected, as before
    assert not any('dj_cqrs_tombstone' in q['sql'] for q in queries.captured_queries)
    assert graves() == []


def stone(pk, age):
    return CQRSTombstone(
        cqrs_id='simplest',
        instance_pk=str(pk),
        cqrs_revision=1,
        cqrs_updated=timezone.now(),
        created=timezone.now() - timedelta(seconds=age),
    )


class _Worker(_consuming.Worker):
    def __init__(self):
        super().__init__(None, 'replica', ack=None, reject=None, publish=None)


@pytest.mark.django_db
def test_item_04_purge_deletes_the_tombstones_older_than_the_ttl(
    settings, django_assert_num_queries
):
    ttl(settings, 600)
    CQRSTombstone.objects.bulk_create([stone(1, 601), stone(2, 599), stone(3, 10_000)])
    with django_assert_num_queries(1):
        assert tombstones.purge('default') == 2
    assert [t[1] for t in graves()] == ['2']


@pytest.mark.django_db
def test_item_04_worker_purges_at_start_then_at_most_every_interval(settings, monkeypatch):
    ttl(settings, 600)
    CQRSTombstone.objects.bulk_create([stone(1, 700), stone(2, 10)])
    stop = threading.Event()
    polls = []

    def poll(timeout):
        polls.append(timeout)
        if len(polls) == 2:  # after the first purge
            CQRSTombstone.objects.bulk_create([stone(3, 700)])
        if len(polls) == 3:
            stop.set()

    _Worker().run(stop, poll)
    # The purge of the start (pk 1) and none after (pk 3 waits for the next interval).
    assert [t[1] for t in graves()] == ['2', '3']

    monkeypatch.setattr(_consuming, 'TOMBSTONE_PURGE_INTERVAL', 0)
    stop.clear()
    polls.clear()
    _Worker().run(stop, poll)
    assert [t[1] for t in graves()] == ['2']


@pytest.mark.django_db
def test_item_04_worker_with_ttl_off_purges_nothing(settings):
    ttl(settings, 0)
    CQRSTombstone.objects.bulk_create([stone(1, 10**7)])
    _Worker().purge_tombstones()
    assert len(graves()) == 1


@pytest.mark.django_db
def test_item_04_purge_failure_is_logged_not_raised(monkeypatch, caplog):
    def broken(using, ttl=None):
        raise OperationalError('no such table: dj_cqrs_tombstone')

    monkeypatch.setattr(tombstones, 'purge', broken)
    _Worker().purge_tombstones()
    assert 'CQRS tombstones could not be purged (database default)' in caplog.text


# --- commands ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_item_04_bulk_load_skips_rows_deleted_after_the_dump(tmp_path, monkeypatch, caplog):
    apply(save(1, 0), delete(1, 1), delete(2, 1, T0))  # 1 deleted after the dump, 2 before
    dump = tmp_path / 'simplest.dump'
    lines = [
        {'id': 1, 'name': 'dumped 1', 'cqrs_revision': 0, 'cqrs_updated': T0},
        {'id': 2, 'name': 'dumped 2', 'cqrs_revision': 0, 'cqrs_updated': T2},
        {'id': 3, 'name': 'dumped 3', 'cqrs_revision': 0, 'cqrs_updated': T0},
    ]
    dump.write_text('simplest\n' + ''.join(f'{ujson.dumps(line)}\n' for line in lines))

    out, err = run_command('cqrs_bulk_load', '-i', str(dump))

    assert (out, err) == ('', 'Done!\n3 instance(s) loaded.\n')
    assert stored_names() == {2: 'dumped 2', 3: 'dumped 3'}
    assert [t[1] for t in graves()] == ['1']  # 2's is gone with its newer row
    assert len(dropped(caplog)) == 1


@pytest.mark.django_db(transaction=True)
def test_item_04_deleted_sync_replica_leaves_tombstones(monkeypatch):
    started = timezone.now()
    SimplestReplica.objects.create(
        id=1, name='gone', cqrs_revision=4, cqrs_updated=started - timedelta(hours=1)
    )
    header = started.isoformat(sep=' ')

    out, err = run_command('cqrs_deleted_sync_replica', stdin=f'simplest,{header}\n[1]\n')

    assert (out, err) == ('', '')
    assert graves() == [('simplest', '1', 5, str(started))]
    # A late SAVE of the deleted row is dropped; the row created again after the diff applies.
    late = str(started - timedelta(minutes=1))
    assert apply(save(1, 5, late))
    assert stored_names() == {}
    apply(save(1, 0, str(started + timedelta(seconds=1))))
    assert list(stored_names()) == [1]


@pytest.mark.django_db(transaction=True)
def test_item_04_sync_of_cqrs_diff_sync_for_a_row_deleted_meanwhile_is_dropped(monkeypatch):
    SimplestModel.objects.create(id=1, name='master')
    assert list(stored_names()) == [1]
    held = []
    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(held.append))
    run_command('cqrs_diff_sync', stdin=f'simplest,{timezone.now()},replica\n[1]\n')
    assert [p.signal_type for p in held] == [SignalType.SYNC]
    monkeypatch.undo()

    SimplestModel.objects.get(id=1).delete()  # the DELETE is applied first (another worker)
    assert stored_names() == {}
    assert consumer.consume(held[0])
    assert stored_names() == {}


@pytest.mark.django_db(transaction=True)
def test_item_04_master_delete_and_recreate_end_to_end():
    # The master's own payloads (loopback transport): delete, late SAVE, then a new row.
    row = SimplestModel.objects.create(id=7, name='first')
    row.name = 'second'
    row.save()
    late = payload(SignalType.SAVE, 'simplest', SimplestModel.objects.get(id=7).to_cqrs_dict())
    row.delete()
    assert consumer.consume(late)
    assert stored_names() == {}
    SimplestModel.objects.create(id=7, name='again')
    assert stored_names() == {7: 'again'}
    assert graves() == []
