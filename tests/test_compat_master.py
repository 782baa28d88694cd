"""Issue 9, master side (items 1-11 and the master modules of item 29): django-cqrs behaviour."""

import threading
import uuid
from datetime import date, time
from decimal import Decimal

import pytest
import ujson
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from model_utils import FieldTracker

from dj_cqrs import outbox
from dj_cqrs.constants import FIELDS_TRACKER_FIELD_NAME, SignalType
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.models import CQRSOutboxMessage
from dj_cqrs.transport.loopback import LoopbackTransport
from tests.dj_master.models import (
    Author,
    AutoFieldsModel,
    NoProduceModel,
    SimplestModel,
    SometimesSyncedModel,
    TrackedAllModel,
    TrackedModel,
    TrackedParent,
    UUIDPkModel,
)
from tests.dj_replica.models import SimplestReplica
from tests.harness import override_cqrs

pytestmark = pytest.mark.django_db(transaction=True)

correlation_calls: list[tuple] = []


def correlation_function(signal_type, cqrs_id, instance_pk, queue):
    correlation_calls.append((signal_type, cqrs_id, instance_pk, queue))
    return f'corr-{signal_type}-{instance_pk}'


@pytest.fixture(autouse=True)
def _clear_correlation_calls():
    correlation_calls.clear()
    yield
    correlation_calls.clear()


def wire(payload):
    """The body as a transport publishes it."""
    return ujson.dumps(payload.to_dict())


# --- item 1: the tracked data stays after publishing ------------------------------------------


def test_item_01_tracked_fields_data_is_kept_after_publishing(produced):
    obj = TrackedModel.objects.create(name='a')
    obj.name = 'b'
    obj.save()

    assert produced[-1].previous_data == {'name': 'a'}
    assert obj.get_tracked_fields_data() == {'name': 'a'}  # not reset by publishing

    obj.day = date(2020, 1, 2)
    obj.save()
    assert obj.get_tracked_fields_data() == {'day': None}  # the next save replaces it


def test_item_01_sync_sends_the_data_of_the_last_save(produced):
    obj = TrackedModel.objects.create(name='a')
    obj.name = 'b'
    obj.save()
    produced.clear()

    obj.cqrs_sync()
    assert produced[0].previous_data == {'name': 'a'}

    fresh = TrackedModel.objects.get(pk=obj.pk)
    assert fresh.get_tracked_fields_data() is None
    fresh.cqrs_sync()
    assert produced[1].previous_data is None


def test_item_01_untracked_model_has_none(produced):
    obj = SimplestModel.objects.create(id=1)
    assert obj.get_tracked_fields_data() is None


# --- item 2: '__all__' tracks cqrs_revision ---------------------------------------------------


def test_item_02_all_tracked_fields_include_cqrs_revision(produced):
    parent = TrackedParent.objects.create(name='p')
    assert produced[-1].previous_data == {'name': None, 'cqrs_revision': None}

    parent.name = 'q'
    parent.save()
    assert produced[-1].previous_data == {'name': 'p', 'cqrs_revision': 0}

    parent.save()
    assert produced[-1].previous_data == {'cqrs_revision': 1}
    assert '"previous_data":{"cqrs_revision":1}' in wire(produced[-1])


def test_item_02_all_tracked_revision_with_serializer(produced):
    obj = TrackedAllModel.objects.create(name='a')
    obj.save()
    assert produced[-1].previous_data == {'cqrs_revision': 0}
    obj.save()
    assert produced[-1].previous_data == {'cqrs_revision': 1}
    assert obj.cqrs_revision == 2  # the stored revision replaces the F() increment


def test_item_02_all_tracked_revision_in_one_transaction(produced):
    parent = TrackedParent.objects.create(name='p')
    parent.save()
    produced.clear()

    with transaction.atomic():
        parent.name = 'q'
        parent.save()
        parent.name = 'r'
        parent.save()

    assert len(produced) == 1
    assert produced[0].previous_data == {'name': 'p', 'cqrs_revision': 1}
    assert produced[0].instance_data['cqrs_revision'] == 2


def test_item_02_all_tracks_an_explicit_pk_on_create(produced):
    TrackedAllModel.objects.create(id=42, name='a')
    assert produced[-1].previous_data == {'id': None, 'name': None, 'cqrs_revision': None}


# --- item 3: foreign keys by attname on create, by name on update -----------------------------


def test_item_03_foreign_key_attname_on_create_name_on_update(produced):
    parent_1 = TrackedParent.objects.create(name='p1')
    parent_2 = TrackedParent.objects.create(name='p2')

    obj = TrackedModel.objects.create(parent=parent_1)
    assert produced[-1].previous_data == {'parent_id': None}

    obj.parent = parent_2
    obj.save()
    assert produced[-1].previous_data == {'parent': parent_1.pk}


# --- item 4: bulk_create ----------------------------------------------------------------------


def test_item_04_bulk_create_sends_none_for_every_tracked_field_with_a_value(produced):
    parent = TrackedParent.objects.create(name='p')
    produced.clear()

    TrackedModel.cqrs.bulk_create(
        [TrackedModel(name='a', parent=parent, day=date(2020, 1, 1)), TrackedModel(name='b')]
    )

    assert [p.previous_data for p in produced] == [
        {'name': None, 'parent_id': None, 'day': None},
        {'name': None},
    ]


def test_item_04_bulk_create_all_tracked(produced):
    TrackedAllModel.cqrs.bulk_create([TrackedAllModel(name='a'), TrackedAllModel(id=50)])

    assert [p.previous_data for p in produced] == [
        {'name': None, 'cqrs_revision': None},
        {'id': None, 'cqrs_revision': None},
    ]


def test_item_04_bulk_created_instance_tracks_from_its_saved_state(produced):
    (obj,) = TrackedModel.cqrs.bulk_create([TrackedModel(name='a')])
    obj.name = 'b'
    obj.save()
    assert produced[-1].previous_data == {'name': 'a'}


# --- item 5: bulk_update ----------------------------------------------------------------------


def test_item_05_bulk_update_sends_old_values_of_every_tracked_field(produced):
    parent = TrackedParent.objects.create(name='p')
    obj = TrackedModel.objects.create(name='a', parent=parent, day=date(2020, 1, 2))
    produced.clear()

    TrackedModel.cqrs.bulk_update(TrackedModel.objects.filter(pk=obj.pk), other=5)

    assert produced[0].previous_data == {'name': 'a', 'parent_id': parent.pk, 'day': '2020-01-02'}
    assert produced[0].instance_data['other'] == 5


def test_item_05_bulk_update_all_tracked(produced):
    obj = TrackedAllModel.objects.create(name='a', amount=Decimal('1.50'))
    updated = TrackedAllModel.objects.values_list('cqrs_updated', flat=True).get()
    produced.clear()

    TrackedAllModel.cqrs.bulk_update(TrackedAllModel.objects.all(), name='b')

    assert produced[0].previous_data == {
        'id': obj.pk,
        'name': 'a',
        'amount': Decimal('1.50'),
        'cqrs_revision': 0,
        'cqrs_updated': str(updated),
    }


# --- item 6: cqrs_saves_count -----------------------------------------------------------------


def test_item_06_saves_count_counts_within_one_transaction(produced):
    obj = SimplestModel.objects.create(id=1, name='a')
    assert (obj.cqrs_saves_count, obj.is_initial_cqrs_save) == (0, True)
    produced.clear()

    with transaction.atomic():
        obj.save()
        assert (obj.cqrs_saves_count, obj.is_initial_cqrs_save) == (1, True)
        obj.save()
        assert (obj.cqrs_saves_count, obj.is_initial_cqrs_save) == (2, False)
        obj.save(update_fields=['name'])
        assert (obj.cqrs_saves_count, obj.is_initial_cqrs_save) == (3, False)

    assert (obj.cqrs_saves_count, obj.is_initial_cqrs_save) == (0, True)
    assert len(produced) == 1  # one message per transaction
    assert produced[0].instance_data['cqrs_revision'] == 1  # one revision per transaction


def test_item_06_saves_count_is_zero_outside_transactions(produced):
    obj = SimplestModel.objects.create(id=1)
    obj.save()
    obj.save()
    assert obj.cqrs_saves_count == 0


def test_item_06_saves_count_of_an_unpublished_model(produced):
    obj = NoProduceModel.objects.create(name='a')
    with transaction.atomic():
        obj.save()
        obj.save()
        assert obj.cqrs_saves_count == 2
    assert obj.cqrs_saves_count == 0
    with transaction.atomic():
        obj.save()
        assert obj.cqrs_saves_count == 1


def test_item_06_save_after_rolled_back_transaction_publishes(produced):
    obj = SimplestModel.objects.create(id=1, name='a')
    produced.clear()

    with pytest.raises(RuntimeError), transaction.atomic():
        obj.save()
        obj.save()
        raise RuntimeError

    assert obj.cqrs_saves_count == 0  # the counter does not survive the rollback
    obj.refresh_from_db()
    with transaction.atomic():
        obj.name = 'b'
        obj.save()
        assert obj.cqrs_saves_count == 1

    assert len(produced) == 1
    assert SimplestReplica.objects.get(pk=1).name == 'b'


def test_item_06_update_fields_save_then_full_save_in_one_transaction(produced):
    obj = SimplestModel.objects.create(id=1, name='a')
    produced.clear()

    with transaction.atomic():
        obj.save(update_fields=['name'])
        obj.name = 'b'
        obj.save()

    assert len(produced) == 1
    assert produced[0].instance_data['cqrs_revision'] == 1


def test_item_06_reset_cqrs_saves_count_queues_another_message(produced):
    obj = SimplestModel.objects.create(id=1, name='a')
    produced.clear()

    with transaction.atomic():
        obj.save()
        obj.reset_cqrs_saves_count()
        assert obj.cqrs_saves_count == 0
        obj.save()
        assert obj.cqrs_saves_count == 1

    assert len(produced) == 2


# --- item 7: cqrs_sync ------------------------------------------------------------------------


def test_item_07_sync_with_serializer_makes_no_query(monkeypatch):
    author = Author.objects.create(name='a')
    author.name = 'in memory'
    sent = []
    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(sent.append))

    with CaptureQueriesContext(connection) as queries:
        assert author.cqrs_sync() is True

    assert len(queries) == 0
    assert sent[0].signal_type == SignalType.SYNC
    assert sent[0].instance_data['name'] == 'in memory'


def test_item_07_sync_with_serializer_of_a_deleted_row_publishes(produced):
    author = Author.objects.create(name='a')
    Author.objects.filter(pk=author.pk)._raw_delete(using='default')
    produced.clear()

    assert author.cqrs_sync() is True
    assert [p.signal_type for p in produced] == [SignalType.SYNC]


def test_item_07_sync_without_serializer_reads_the_database(produced):
    obj = SimplestModel.objects.create(id=1, name='a')
    SimplestModel.objects.filter(pk=1).update(name='in db')
    produced.clear()

    assert obj.cqrs_sync() is True
    assert obj.name == 'in db'
    assert produced[0].instance_data['name'] == 'in db'

    SimplestModel.objects.filter(pk=1)._raw_delete(using='default')
    assert obj.cqrs_sync() is False
    assert len(produced) == 1


def test_item_07_sync_returns_true_when_it_would_have_published(produced):
    no_produce = NoProduceModel.objects.create(name='a')
    private = SometimesSyncedModel.objects.create(name='private')

    assert no_produce.cqrs_sync() is True
    assert private.cqrs_sync() is True
    assert SimplestModel(id=3).cqrs_sync() is False  # unsaved
    assert produced == []

    with override_cqrs(master={'CQRS_PRODUCE': False}):
        obj = SimplestModel.objects.create(id=1)
        assert obj.cqrs_sync() is True


# --- item 8: an unimportable serializer -------------------------------------------------------


def test_item_08_unimportable_serializer_raises_import_error(produced, monkeypatch):
    monkeypatch.setattr(Author, 'CQRS_SERIALIZER', 'tests.dj_master.no_such_module.Serializer')

    with pytest.raises(ImportError, match="CQRS_SERIALIZER can't be imported"):
        Author.objects.create(name='outside')
    with (
        pytest.raises(ImportError, match="CQRS_SERIALIZER can't be imported"),
        transaction.atomic(),
    ):
        Author.objects.create(name='in a transaction')

    assert Author.objects.count() == 2  # raised from the commit hook, after the commit
    assert produced == []


# --- item 9: TransportPayload -----------------------------------------------------------------


def test_item_09_payload_calls_correlation_function_without_correlation_id():
    with override_cqrs(master={'correlation_function': correlation_function}):
        pk = uuid.UUID(int=5)
        payload = TransportPayload('SAVE', 'simplest', {}, pk, queue='q')
        given = TransportPayload('SAVE', 'simplest', {}, 1, correlation_id='given')
        empty = TransportPayload('SAVE', 'simplest', {}, 1, correlation_id='')

    assert payload.correlation_id == f'corr-SAVE-{pk}'
    assert given.correlation_id == 'given'
    assert empty.correlation_id == 'corr-SAVE-1'
    assert correlation_calls == [('SAVE', 'simplest', pk, 'q'), ('SAVE', 'simplest', 1, None)]


def test_item_09_correlation_function_gets_the_model_pk(produced):
    with override_cqrs(master={'correlation_function': correlation_function}):
        obj = UUIDPkModel.objects.create()
    assert correlation_calls == [('SAVE', 'uuid_pk', obj.pk, None)]
    assert produced[0].correlation_id == f'corr-SAVE-{obj.pk}'


def test_item_09_to_dict_turns_uuid_pk_into_str():
    pk = uuid.UUID(int=7)
    payload = TransportPayload('SAVE', 'uuid_pk', {}, pk, correlation_id=uuid.UUID(int=8))

    assert payload.pk == pk
    body = payload.to_dict()
    assert body['instance_pk'] == str(pk)
    assert body['correlation_id'] == str(uuid.UUID(int=8))
    assert ujson.loads(ujson.dumps(body))['instance_pk'] == str(pk)


def test_item_09_negative_retries_rejected():
    payload = TransportPayload('SAVE', 'simplest', {}, 1)
    with pytest.raises(AssertionError, match='0 or positive'):
        payload.retries = -1
    assert payload.retries == 0
    payload.retries = 0


# --- item 10: decimals as JSON numbers, times as text -----------------------------------------


def test_item_10_decimal_is_a_json_number_time_is_text(produced):
    AutoFieldsModel.objects.create(amount=Decimal('12.30'), at_time=time(10, 11, 12))

    body = ujson.loads(wire(produced[0]))
    assert body['instance_data']['amount'] == 12.3
    assert isinstance(body['instance_data']['amount'], float)
    assert body['instance_data']['at_time'] == '10:11:12'


def test_item_10_decimal_in_previous_data(produced):
    obj = TrackedAllModel.objects.create(amount=Decimal('1.25'))
    obj.amount = Decimal('2.50')
    obj.save()

    body = ujson.loads(wire(produced[-1]))
    assert body['previous_data']['amount'] == 1.25
    assert body['instance_data']['amount'] == 2.5


def test_item_10_decimal_survives_the_outbox(produced, monkeypatch):
    monkeypatch.setattr('dj_cqrs.controller.producer._publish_saved', lambda *args, **kwargs: None)
    with override_cqrs(master={'outbox': True}):
        obj = TrackedAllModel.objects.create(amount=Decimal('1.25'))
        obj.amount = Decimal('3.75')
        obj.save()

    rows = list(CQRSOutboxMessage.objects.order_by('id'))
    assert [row.previous_data.get('amount') for row in rows] == [None, 1.25]

    produced.clear()
    with override_cqrs(master={'outbox': True}):
        assert outbox.relay_batch('default', min_age=0) == 2
    bodies = [ujson.loads(wire(payload)) for payload in produced]
    assert [body['previous_data'].get('amount') for body in bodies] == [None, 1.25]
    assert [body['instance_data']['amount'] for body in bodies] == [3.75, 3.75]
    assert not CQRSOutboxMessage.objects.exists()


# --- item 11: save_tracked_fields -------------------------------------------------------------


def test_item_11_save_tracked_fields_snapshots_now(produced):
    obj = TrackedModel.objects.create(name='a')
    obj.name = 'b'
    obj.save_tracked_fields()
    assert obj.get_tracked_fields_data() == {'name': 'a'}

    new = TrackedModel(name='x')
    new.save_tracked_fields()
    assert new.get_tracked_fields_data() == {'name': None}


def test_item_11_save_tracked_fields_without_tracking_is_a_no_op():
    obj = SimplestModel(id=1)
    obj.save_tracked_fields()
    assert obj.get_tracked_fields_data() is None


# --- item 29: dj_cqrs.tracker, dj_cqrs.correlation, dj_cqrs.state -----------------------------


def test_item_29_cqrs_tracker_is_the_installed_field_tracker():
    from dj_cqrs.tracker import CQRSTracker

    assert issubclass(CQRSTracker, FieldTracker)
    tracker = getattr(TrackedModel, FIELDS_TRACKER_FIELD_NAME)
    assert isinstance(tracker, CQRSTracker)
    assert set(tracker.fields) == {'name', 'parent_id', 'day'}
    assert not hasattr(SimplestModel, FIELDS_TRACKER_FIELD_NAME)


def test_item_29_tracker_instance_api():
    parent = TrackedParent.objects.create(name='p')
    obj = TrackedModel(name='a', parent=parent)
    tracker = getattr(obj, FIELDS_TRACKER_FIELD_NAME)
    assert tracker.changed_initial() == {'name': None, 'parent_id': None}

    obj.save()
    obj.day = date(2020, 1, 2)
    obj.parent = None
    assert tracker.changed() == {'day': None, 'parent': parent.pk}
    assert tracker.current() == {'name': 'a', 'parent_id': None, 'day': '2020-01-02'}


def test_item_29_correlation_module(produced):
    from dj_cqrs.correlation import get_correlation_id
    from dj_cqrs.utils import get_correlation_id as utils_get_correlation_id

    assert utils_get_correlation_id is get_correlation_id
    assert get_correlation_id('SAVE', 'simplest', 1, None) is None
    with override_cqrs(master={'correlation_function': correlation_function}):
        assert get_correlation_id('SYNC', 'simplest', 1, 'q') == 'corr-SYNC-1'
    assert correlation_calls == [('SYNC', 'simplest', 1, 'q')]


def test_item_29_state_holds_the_active_bulk_relate_block():
    from dj_cqrs.state import cqrs_state
    from dj_cqrs.utils import bulk_relate_cqrs_serialization

    assert isinstance(cqrs_state, threading.local)
    assert cqrs_state.bulk_relate_cm is None
    seen_in_thread = []

    with bulk_relate_cqrs_serialization() as entered:
        outer = cqrs_state.bulk_relate_cm
        assert entered is None
        assert outer is not None
        thread = threading.Thread(target=lambda: seen_in_thread.append(cqrs_state.bulk_relate_cm))
        thread.start()
        thread.join()
        with bulk_relate_cqrs_serialization('author'):
            assert cqrs_state.bulk_relate_cm is not outer
        assert cqrs_state.bulk_relate_cm is outer

    assert cqrs_state.bulk_relate_cm is None
    assert seen_in_thread == [None]


def test_item_29_bulk_relate_cm_serves_registered_instances(produced):
    from dj_cqrs.state import cqrs_state
    from dj_cqrs.utils import bulk_relate_cqrs_serialization

    authors = [Author.objects.create(name=f'a{i}') for i in range(3)]
    with bulk_relate_cqrs_serialization():
        cm = cqrs_state.bulk_relate_cm
        for author in authors:
            cm.register(author, 'default')
        with CaptureQueriesContext(connection) as queries:
            cached = [cm.get_cached_instance(author, 'default') for author in authors]
        assert len(queries) == 1
        assert [c.name for c in cached] == ['a0', 'a1', 'a2']
        assert cm.get_cached_instance(SimplestModel(id=1), 'default') is None


def test_item_29_bulk_relate_decorator_uses_a_fresh_block_per_call(produced):
    from dj_cqrs.state import cqrs_state
    from dj_cqrs.utils import bulk_relate_cqrs_serialization

    seen = []

    @bulk_relate_cqrs_serialization()
    def work():
        seen.append(cqrs_state.bulk_relate_cm)

    work()
    work()
    assert seen[0] is not None and seen[1] is not None
    assert seen[0] is not seen[1]
    assert cqrs_state.bulk_relate_cm is None
