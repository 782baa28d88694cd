"""Transactional outbox (``settings.CQRS['master']['outbox'] = True``) and ``cqrs_relay``.

Runs on SQLite (``tests.settings``) and on PostgreSQL (``--ds=tests.settings_pg``). The
transport is ``LoopbackTransport``: a published message is applied at once to the replica tables,
so "the replica row appears" means "the message was published". The ``loopback`` fixture below
wraps it with a switch that makes publishing fail (returns False or raises), the way a
RabbitMQ transport does when the broker is down.

The test settings have a second database, ``other``: a change saved there keeps its outbox
row there too.
"""

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dj_cqrs import outbox
from dj_cqrs.constants import SignalType
from dj_cqrs.controller import _outbox
from dj_cqrs.models import CQRSOutboxMessage
from dj_cqrs.transport.loopback import LoopbackTransport
from tests import harness
from tests.dj_master.models import CustomDeleteModel, SimplestModel, TrackedModel
from tests.dj_replica.models import CustomDeleteReplica, SimplestReplica

pytestmark = pytest.mark.django_db(transaction=True, databases=['default', 'other'])

OUTBOX_TABLE = CQRSOutboxMessage._meta.db_table


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def with_outbox():
    """The outbox switched on; confirmed rows of other tests are forgotten first."""
    outbox.flush_published()
    with harness.outbox_on():
        yield
    outbox.flush_published()


@pytest.fixture
def loopback(monkeypatch):
    """``LoopbackTransport`` with a switch.

    ``loopback.mode``: ``'up'`` publishes (the replica applies it), ``'false'`` makes ``produce``
    return False, ``'raise'`` makes it raise ``ConnectionError``. ``loopback.sent`` lists the
    payloads that went through while up.
    """
    original = LoopbackTransport.produce
    state = SimpleNamespace(mode='up', sent=[], refused=[])

    def produce(payload):
        if state.mode == 'false':
            state.refused.append(payload)
            return False
        if state.mode == 'raise':
            state.refused.append(payload)
            raise ConnectionError('broker down')
        state.sent.append(payload)
        return original(payload)

    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(produce))
    return state


def outbox_rows():
    """Outbox rows as (cqrs_id, instance_pk, signal_type), oldest first, as they are (the
    rows of confirmed messages are not flushed first)."""
    return list(
        CQRSOutboxMessage.objects.order_by('id').values_list(
            'cqrs_id', 'instance_pk', 'signal_type'
        )
    )


def replica_name_by_id():
    """``{id: name}`` of this process's ``SimplestReplica`` rows."""
    return dict(SimplestReplica.objects.values_list('id', 'name'))


def age_rows(seconds):
    """Make every outbox row ``seconds`` old."""
    CQRSOutboxMessage.objects.update(created=timezone.now() - timedelta(seconds=seconds))


# --- writing rows -----------------------------------------------------------------------------


def test_save_in_transaction_writes_one_row_removed_once_published(with_outbox, loopback):
    with transaction.atomic():
        SimplestModel.objects.create(id=1, name='first')
        assert outbox_rows() == [('simplest', '1', SignalType.SAVE)]
        assert replica_name_by_id() == {}

    assert replica_name_by_id() == {1: 'first'}
    assert len(loopback.sent) == 1
    outbox.flush_published()
    assert outbox_rows() == []


def test_save_outside_transaction_writes_a_row_removed_once_published(with_outbox, loopback):
    obj = SimplestModel.objects.create(id=1, name='first')
    obj.name = 'second'
    obj.save()

    assert replica_name_by_id() == {1: 'second'}
    outbox.flush_published()
    assert outbox_rows() == []


def test_update_in_transaction_writes_a_row(with_outbox, loopback):
    obj = SimplestModel.objects.create(id=1, name='first')
    outbox.flush_published()

    with transaction.atomic():
        obj.name = 'second'
        obj.save()
        assert outbox_rows() == [('simplest', '1', SignalType.SAVE)]

    assert SimplestReplica.objects.get(pk=1).cqrs_revision == 1
    outbox.flush_published()
    assert outbox_rows() == []


def test_rolled_back_transaction_leaves_no_row(with_outbox, loopback):
    with pytest.raises(RuntimeError), transaction.atomic():
        SimplestModel.objects.create(id=1, name='rolled back')
        assert len(outbox_rows()) == 1
        raise RuntimeError('boom')

    assert outbox_rows() == []
    assert loopback.sent == []
    assert replica_name_by_id() == {}


def test_rolled_back_savepoint_drops_only_its_row(with_outbox, loopback):
    with transaction.atomic():
        SimplestModel.objects.create(id=1, name='kept')
        with pytest.raises(RuntimeError), transaction.atomic():
            SimplestModel.objects.create(id=2, name='dropped')
            raise RuntimeError('boom')
        assert outbox_rows() == [('simplest', '1', SignalType.SAVE)]

    assert replica_name_by_id() == {1: 'kept'}
    outbox.flush_published()
    assert outbox_rows() == []


def test_three_saves_of_one_instance_in_a_transaction_write_one_row(with_outbox, loopback):
    obj = SimplestModel.objects.create(id=1, name='start')
    outbox.flush_published()
    loopback.sent.clear()

    with transaction.atomic():
        for name in ('one', 'two', 'three'):
            obj.name = name
            obj.save()
        assert outbox_rows() == [('simplest', '1', SignalType.SAVE)]

    assert len(loopback.sent) == 1
    assert SimplestReplica.objects.get(pk=1).name == 'three'
    outbox.flush_published()
    assert outbox_rows() == []


def test_two_instances_in_a_transaction_write_two_rows(with_outbox, loopback):
    with transaction.atomic():
        SimplestModel.objects.create(id=1, name='a')
        SimplestModel.objects.create(id=2, name='b')
        assert outbox_rows() == [('simplest', '1', 'SAVE'), ('simplest', '2', 'SAVE')]

    assert replica_name_by_id() == {1: 'a', 2: 'b'}


def test_save_with_update_fields_writes_no_row(with_outbox, loopback):
    obj = SimplestModel.objects.create(id=1, name='first')
    outbox.flush_published()

    with transaction.atomic():
        obj.name = 'not published'
        obj.save(update_fields=['name'])
        assert outbox_rows() == []


def test_delete_stores_the_full_payload(with_outbox, loopback):
    obj = SimplestModel.objects.create(id=1, name='doomed')
    obj.name = 'doomed again'
    obj.save()
    outbox.flush_published()
    assert SimplestReplica.objects.get(pk=1).cqrs_revision == 1

    loopback.mode = 'false'
    with transaction.atomic():
        obj.delete()
        [row] = CQRSOutboxMessage.objects.all()
        assert (row.cqrs_id, row.instance_pk, row.signal_type) == ('simplest', '1', 'DELETE')

    [refused] = loopback.refused
    row = CQRSOutboxMessage.objects.get()
    assert row.payload == refused.to_dict()
    assert row.payload['signal_type'] == 'DELETE'
    assert row.payload['cqrs_id'] == 'simplest'
    assert row.payload['instance_pk'] == 1
    data = row.payload['instance_data']
    assert data['id'] == 1
    assert data['cqrs_revision'] == 2
    assert isinstance(data['cqrs_updated'], str)
    # The replica still has the row: the DELETE was not published.
    assert replica_name_by_id() == {1: 'doomed again'}

    loopback.mode = 'up'
    assert 'Relayed 1 ' in harness.relay_once('--min-age', '0')
    assert replica_name_by_id() == {}
    assert outbox_rows() == []
    [sent] = loopback.sent[-1:]
    assert sent.signal_type == SignalType.DELETE
    assert sent.instance_data == data


def test_delete_row_keeps_custom_delete_data(with_outbox, loopback):
    obj = CustomDeleteModel.objects.create(name='custom')
    assert CustomDeleteReplica.objects.filter(pk=obj.pk).exists()
    loopback.mode = 'raise'

    obj.delete()

    row = CQRSOutboxMessage.objects.get(signal_type='DELETE')
    assert row.payload['instance_data']['custom'] == {'name': 'custom'}


def test_outbox_off_writes_nothing(loopback):
    outbox.flush_published()
    with harness.override_cqrs(master={'outbox': False}):
        obj = SimplestModel.objects.create(id=1, name='first')
        with transaction.atomic():
            obj.name = 'second'
            obj.save()
        loopback.mode = 'false'
        obj.name = 'lost'
        obj.save()
        obj.delete()
        SimplestModel.cqrs.bulk_create([SimplestModel(id=2, name='bulk')])

    assert outbox_rows() == []


def test_outbox_is_off_by_default(loopback):
    assert outbox.is_enabled() is False
    SimplestModel.objects.create(id=1, name='first')
    assert outbox_rows() == []


# --- failing transport and the relay ----------------------------------------------------------


@pytest.mark.parametrize('failure', ['false', 'raise'])
def test_failed_publish_keeps_the_row_and_the_relay_publishes_it(with_outbox, loopback, failure):
    loopback.mode = failure

    SimplestModel.objects.create(id=1, name='pending')
    with transaction.atomic():
        SimplestModel.objects.create(id=2, name='pending too')
    outbox.flush_published()

    assert len(loopback.refused) == 2
    assert outbox_rows() == [('simplest', '1', 'SAVE'), ('simplest', '2', 'SAVE')]
    assert replica_name_by_id() == {}

    loopback.mode = 'up'
    assert 'Relayed 2 ' in harness.relay_once('--min-age', '0')

    assert replica_name_by_id() == {1: 'pending', 2: 'pending too'}
    assert outbox_rows() == []
    assert [(p.signal_type, p.pk) for p in loopback.sent] == [('SAVE', 1), ('SAVE', 2)]


def test_relay_publishes_a_change_whose_process_died_before_publishing(
    with_outbox, loopback, monkeypatch
):
    """Committed, but the on-commit publish never ran (the process was killed)."""
    with monkeypatch.context() as patch:
        patch.setattr('dj_cqrs.controller.producer._publish_saved', lambda *args, **kwargs: None)
        with transaction.atomic():
            SimplestModel.objects.create(id=1, name='orphan')
    assert loopback.sent == []
    assert outbox_rows() == [('simplest', '1', 'SAVE')]

    harness.relay_once('--min-age', '0')

    assert replica_name_by_id() == {1: 'orphan'}
    assert outbox_rows() == []


def test_relay_does_not_send_again_what_was_published(with_outbox, loopback):
    SimplestModel.objects.create(id=1, name='published')
    assert len(loopback.sent) == 1

    assert 'Relayed 0 ' in harness.relay_once('--min-age', '0')

    assert len(loopback.sent) == 1
    assert outbox_rows() == []


def test_relay_sends_the_current_state(with_outbox, loopback):
    loopback.mode = 'false'
    SimplestModel.objects.create(id=1, name='old')
    SimplestModel.objects.filter(pk=1).update(name='new', cqrs_revision=F('cqrs_revision') + 1)

    loopback.mode = 'up'
    harness.relay_once('--min-age', '0')

    replica = SimplestReplica.objects.get(pk=1)
    assert (replica.name, replica.cqrs_revision) == ('new', 1)
    [payload] = loopback.sent
    assert payload.instance_data['name'] == 'new'
    assert payload.instance_data['cqrs_revision'] == 1
    assert outbox_rows() == []


def test_relay_drops_a_save_row_whose_instance_was_deleted(with_outbox, loopback):
    loopback.mode = 'false'
    SimplestModel.objects.create(id=1, name='gone')
    SimplestModel.objects.create(id=2, name='still here')
    with connection.cursor() as cursor:
        cursor.execute(f'DELETE FROM {SimplestModel._meta.db_table} WHERE id = %s', [1])

    loopback.mode = 'up'
    harness.relay_once('--min-age', '0')

    assert [p.pk for p in loopback.sent] == [2]
    assert replica_name_by_id() == {2: 'still here'}
    assert outbox_rows() == []


def test_relay_publishes_a_delete_after_the_dropped_save(with_outbox, loopback):
    loopback.mode = 'false'
    obj = SimplestModel.objects.create(id=1, name='created and deleted')
    obj.delete()
    assert outbox_rows() == [('simplest', '1', 'SAVE'), ('simplest', '1', 'DELETE')]

    loopback.mode = 'up'
    harness.relay_once('--min-age', '0')

    assert [p.signal_type for p in loopback.sent] == ['DELETE']
    assert replica_name_by_id() == {}
    assert outbox_rows() == []


def test_relay_sends_delete_with_a_fresh_expiry(with_outbox, loopback):
    obj = SimplestModel.objects.create(id=1, name='x')
    outbox.flush_published()
    loopback.mode = 'false'
    obj.delete()
    row = CQRSOutboxMessage.objects.get()
    row.payload['expires'] = '2000-01-01T00:00:00+00:00'
    row.save()

    loopback.mode = 'up'
    harness.relay_once('--min-age', '0')

    payload = loopback.sent[-1]
    assert payload.signal_type == SignalType.DELETE
    assert payload.expires > timezone.now()
    assert replica_name_by_id() == {}


def test_relay_keeps_tracked_previous_values(with_outbox, loopback, recorded):
    obj = TrackedModel.objects.create(name='before')
    recorded.clear()
    loopback.mode = 'false'

    obj.name = 'after'
    obj.save()
    [refused] = loopback.refused

    loopback.mode = 'up'
    harness.relay_once('--min-age', '0')

    assert refused.previous_data == {'name': 'before'}
    assert [r['previous_data'] for r in recorded] == [{'name': 'before'}]


def test_relay_keeps_tracked_previous_values_of_every_save_in_the_transaction(
    with_outbox, loopback, recorded
):
    """Two saves in one transaction change two tracked fields: the on-commit message carries
    the previous values of both; the relayed message must carry the same."""
    obj = TrackedModel.objects.create(name='before')
    recorded.clear()
    loopback.mode = 'false'

    with transaction.atomic():
        obj.name = 'after'
        obj.save()
        obj.other = 5
        obj.day = timezone.now().date()
        obj.save()
    [refused] = loopback.refused
    assert refused.previous_data == {'name': 'before', 'day': None}

    loopback.mode = 'up'
    harness.relay_once('--min-age', '0')

    assert [r['previous_data'] for r in recorded] == [refused.previous_data]


def test_item_05_min_age_leaves_young_rows_in_flight(with_outbox, loopback):
    # Rows written by a process that has committed and not published yet (in flight).
    SimplestModel.objects.bulk_create([SimplestModel(id=pk, name=f'row {pk}') for pk in (1, 2)])
    outbox.record('default', 'simplest', 1, SignalType.SAVE)
    age_rows(600)
    outbox.record('default', 'simplest', 2, SignalType.SAVE)

    assert 'Relayed 1 ' in harness.relay_once('--min-age', '60')

    assert replica_name_by_id() == {1: 'row 1'}
    assert outbox_rows() == [('simplest', '2', 'SAVE')]

    assert 'Relayed 0 ' in harness.relay_once('--min-age', '3600')
    assert outbox_rows() == [('simplest', '2', 'SAVE')]

    harness.relay_once('--min-age', '0')
    assert replica_name_by_id() == {1: 'row 1', 2: 'row 2'}
    assert outbox_rows() == []


@pytest.mark.parametrize('mode', ['false', 'raise'])
def test_item_05_failed_publish_is_due_at_once_whatever_min_age(with_outbox, loopback, mode):
    loopback.mode = mode
    SimplestModel.objects.create(id=1, name='failed')
    with transaction.atomic():
        SimplestModel.objects.create(id=2, name='failed in a transaction')
        SimplestModel.objects.create(id=3, name='failed in a transaction')
    SimplestModel.objects.get(id=3).delete()
    loopback.mode = 'up'
    assert CQRSOutboxMessage.objects.filter(failed_at__isnull=True).count() == 0
    # Written after the outage: in flight, left to the on-commit publishing.
    SimplestModel.objects.bulk_create([SimplestModel(id=4, name='in flight')])
    outbox.record('default', 'simplest', 4, SignalType.SAVE)

    assert 'Relayed 4 ' in harness.relay_once('--min-age', '3600')

    assert replica_name_by_id() == {1: 'failed', 2: 'failed in a transaction'}
    assert outbox_rows() == [('simplest', '4', 'SAVE')]


def test_item_05_failed_rows_are_marked_in_one_update(with_outbox, loopback):
    refs = [outbox.record('default', 'simplest', pk, SignalType.SAVE) for pk in (1, 2, 3)]
    for ref in refs[:2]:
        _outbox.failed(ref)
    with CaptureQueriesContext(connection) as queries:
        _outbox.mark_failed(refs[2])

    updates = [q['sql'] for q in queries.captured_queries if q['sql'].startswith('UPDATE')]
    assert len(updates) == 1, updates
    assert CQRSOutboxMessage.objects.filter(failed_at__isnull=False).count() == 3


def test_relay_default_min_age_leaves_a_fresh_row(with_outbox, loopback):
    SimplestModel.objects.bulk_create([SimplestModel(id=1, name='fresh')])
    outbox.record('default', 'simplest', 1, SignalType.SAVE)

    harness.relay_once()

    assert outbox_rows() == [('simplest', '1', 'SAVE')]
    assert replica_name_by_id() == {}


def test_relay_failing_transport_keeps_rows_and_raises_command_error(with_outbox, loopback):
    loopback.mode = 'false'
    SimplestModel.objects.create(id=1, name='a')
    SimplestModel.objects.create(id=2, name='b')

    with pytest.raises(CommandError, match='default'):
        harness.relay_once('--min-age', '0')

    assert outbox_rows() == [('simplest', '1', 'SAVE'), ('simplest', '2', 'SAVE')]
    assert replica_name_by_id() == {}


def test_relay_batches_oldest_first(with_outbox, loopback):
    loopback.mode = 'false'
    for pk in (3, 1, 2):
        SimplestModel.objects.create(id=pk, name=f'n{pk}')
    loopback.mode = 'up'

    assert 'Relayed 3 ' in harness.relay_once('--min-age', '0', '--batch', '2')

    assert [p.pk for p in loopback.sent] == [3, 1, 2]
    assert outbox_rows() == []


def test_bulk_create_writes_rows_the_relay_publishes(with_outbox, loopback):
    loopback.mode = 'false'
    SimplestModel.cqrs.bulk_create([SimplestModel(id=pk, name=f'bulk {pk}') for pk in (1, 2, 3)])
    assert len(outbox_rows()) == 3

    loopback.mode = 'up'
    harness.relay_once('--min-age', '0')

    assert replica_name_by_id() == {1: 'bulk 1', 2: 'bulk 2', 3: 'bulk 3'}
    assert outbox_rows() == []


def test_relay_without_outbox_table_is_a_command_error(with_outbox):
    with pytest.raises(CommandError, match=OUTBOX_TABLE), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f'DROP TABLE {OUTBOX_TABLE}')
        harness.relay_once('--min-age', '0', '--database', 'default')

    # The DROP was rolled back with the transaction.
    assert OUTBOX_TABLE in connection.introspection.table_names()


def test_relay_unknown_database_is_a_command_error(with_outbox):
    with pytest.raises(CommandError, match='nope'):
        harness.relay_once('--database', 'nope')


def test_relay_with_outbox_off_says_so(loopback):
    err = harness.relay_once('--min-age', '0')
    assert 'outbox' in err
    assert 'Relayed 0 ' in err


# --- record / relay_batch with an explicit database alias -------------------------------------


def test_record_and_relay_batch_with_using(with_outbox, loopback):
    SimplestModel.objects.bulk_create([SimplestModel(id=pk, name=f'raw {pk}') for pk in (1, 2)])
    assert replica_name_by_id() == {}

    with transaction.atomic(using='default'):
        ref = outbox.record('default', 'simplest', 1, SignalType.SAVE)
        outbox.record('default', 'simplest', 2, SignalType.SAVE, previous_data={'name': 'x'})
    assert ref[0] == 'default'
    assert CQRSOutboxMessage.objects.using('default').filter(id=ref[1]).exists()

    assert outbox.relay_batch('default', batch_size=1, min_age=0) == 1
    assert replica_name_by_id() == {1: 'raw 1'}
    assert outbox.relay_batch('default', batch_size=10, min_age=0) == 1
    assert outbox.relay_batch('default', batch_size=10, min_age=0) == 0

    assert replica_name_by_id() == {1: 'raw 1', 2: 'raw 2'}
    assert loopback.sent[1].previous_data == {'name': 'x'}
    assert outbox_rows() == []


def test_relay_batch_of_a_sync_row_sends_a_sync_to_its_queue(with_outbox, loopback):
    SimplestModel.objects.bulk_create([SimplestModel(id=1, name='synced')])

    outbox.record('default', 'simplest', 1, SignalType.SYNC, queue='replica')
    assert outbox.relay_batch('default', batch_size=10, min_age=0) == 1

    [payload] = loopback.sent
    assert (payload.signal_type, payload.queue) == (SignalType.SYNC, 'replica')
    assert replica_name_by_id() == {1: 'synced'}


def test_relay_batch_of_an_unknown_cqrs_id_is_dropped(with_outbox, loopback):
    outbox.record('default', 'no_such_model', 1, SignalType.SAVE)
    assert outbox.relay_batch('default', batch_size=10, min_age=0) == 1
    assert loopback.sent == []
    assert outbox_rows() == []


def test_relay_batch_respects_min_age(with_outbox, loopback):
    outbox.record('default', 'simplest', 1, SignalType.SAVE)
    assert outbox.relay_batch('default', batch_size=10, min_age=3600) == 0
    assert len(outbox_rows()) == 1


def test_relay_batch_failure_rolls_back_the_whole_batch(with_outbox, loopback):
    SimplestModel.objects.bulk_create([SimplestModel(id=pk, name=str(pk)) for pk in (1, 2)])
    outbox.record('default', 'simplest', 1, SignalType.SAVE)
    outbox.record('default', 'simplest', 2, SignalType.SAVE)
    loopback.mode = 'false'

    with pytest.raises(outbox.RelayError):
        outbox.relay_batch('default', batch_size=10, min_age=0)

    assert len(outbox_rows()) == 2


# --- several databases ------------------------------------------------------------------------


def test_outbox_rows_stay_in_the_database_of_the_change(with_outbox, loopback):
    loopback.mode = 'false'
    SimplestModel(id=7, name='elsewhere').save(using='other')
    with transaction.atomic(using='other'):
        SimplestModel(id=8, name='elsewhere too').save(using='other')
    outbox.flush_published()

    assert CQRSOutboxMessage.objects.using('other').count() == 2
    assert CQRSOutboxMessage.objects.using('default').count() == 0

    loopback.mode = 'up'
    assert 'Relayed 0 ' in harness.relay_once('--min-age', '0', '--database', 'default')
    assert 'Relayed 2 ' in harness.relay_once('--min-age', '0', '--database', 'other')

    assert replica_name_by_id() == {7: 'elsewhere', 8: 'elsewhere too'}
    assert CQRSOutboxMessage.objects.using('other').count() == 0


def test_published_change_in_another_database_removes_its_row(with_outbox, loopback):
    SimplestModel(id=9, name='published').save(using='other')
    outbox.flush_published()

    assert replica_name_by_id() == {9: 'published'}
    assert CQRSOutboxMessage.objects.using('other').count() == 0
