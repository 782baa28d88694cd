"""Master side (SPEC §3): publishing, revisions, transactions, meta, sync, raw mixins, errors."""

import logging
import re
from datetime import datetime, timedelta, timezone

import pytest
from dateutil.parser import parse as parse_datetime
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from dj_cqrs.constants import SignalType
from dj_cqrs.transport.loopback import LoopbackTransport
from tests.dj_master.models import (
    Author,
    CustomDeleteModel,
    MetaModel,
    NoProduceModel,
    PlainBase,
    ProxyModel,
    Publisher,
    SimplestModel,
    SometimesSyncedModel,
    TrackedModel,
    TreeModel,
    UUIDPkModel,
)
from tests.dj_replica.models import (
    AuthorReplica,
    CustomDeleteReplica,
    MetaReplica,
    ProxyReplica,
    SimplestReplica,
    SometimesReplica,
    TreeReplica,
    UUIDReplica,
)
from tests.harness import override_cqrs, signal_types

pytestmark = pytest.mark.django_db(transaction=True)


# --- helpers --------------------------------------------------------------------------------

meta_calls: list[dict] = []
correlation_calls: list[tuple] = []


def meta_function(**kwargs):
    """Module-level meta function, referenced by dotted path 'tests.test_master.meta_function'."""
    meta_calls.append(kwargs)
    return {'from': 'meta_function', 'signal_type': kwargs['signal_type']}


def correlation_function(signal_type, cqrs_id, instance_pk, queue):
    correlation_calls.append((signal_type, cqrs_id, instance_pk, queue))
    return f'{signal_type}:{cqrs_id}:{instance_pk}:{queue}'


@pytest.fixture(autouse=True)
def _clear_calls():
    meta_calls.clear()
    correlation_calls.clear()
    yield
    meta_calls.clear()
    correlation_calls.clear()


def db_revision(model, pk):
    return model.objects.values_list('cqrs_revision', flat=True).get(pk=pk)


# --- create / update / delete ---------------------------------------------------------------


def test_create_replicates(produced):
    SimplestModel.objects.create(id=1, name='first')

    assert len(produced) == 1
    payload = produced[0]
    assert payload.signal_type == SignalType.SAVE
    assert payload.cqrs_id == 'simplest'
    assert payload.pk == 1
    assert payload.instance_data['id'] == 1
    assert payload.instance_data['name'] == 'first'
    assert payload.instance_data['cqrs_revision'] == 0
    assert isinstance(payload.instance_data['cqrs_updated'], str)

    replica = SimplestReplica.objects.get(pk=1)
    assert replica.name == 'first'
    assert replica.cqrs_revision == 0


def test_update_replicates(produced):
    obj = SimplestModel.objects.create(id=1, name='first')
    obj.name = 'second'
    obj.save()

    assert signal_types(produced) == [SignalType.SAVE, SignalType.SAVE]
    assert produced[1].instance_data['name'] == 'second'
    replica = SimplestReplica.objects.get(pk=1)
    assert replica.name == 'second'
    assert replica.cqrs_revision == 1


def test_delete_replicates(produced):
    obj = SimplestModel.objects.create(id=1, name='first')
    assert SimplestReplica.objects.filter(pk=1).exists()

    obj.delete()

    assert signal_types(produced) == [SignalType.SAVE, SignalType.DELETE]
    assert produced[1].pk == 1
    assert not SimplestReplica.objects.filter(pk=1).exists()


def test_uuid_pk_is_sent_as_str(produced):
    obj = UUIDPkModel.objects.create(name='uuid')

    payload = produced[0]
    assert payload.pk == obj.pk  # the payload keeps the model's pk, to_dict() sends text
    assert payload.to_dict()['instance_pk'] == str(obj.pk)
    assert payload.instance_data['id'] == str(obj.pk)
    assert UUIDReplica.objects.get(pk=obj.pk).name == 'uuid'

    pk = obj.pk
    obj.delete()
    assert produced[1].signal_type == SignalType.DELETE
    assert produced[1].to_dict()['instance_pk'] == str(pk)
    assert produced[1].instance_data['id'] == str(pk)
    assert not UUIDReplica.objects.exists()


def test_payload_expires_uses_message_ttl(produced):
    before = datetime.now(tz=timezone.utc)
    SimplestModel.objects.create(id=1)
    after = datetime.now(tz=timezone.utc)

    expires = produced[0].expires
    assert expires is not None
    # tests.settings: CQRS_MESSAGE_TTL = 3600
    assert before + timedelta(seconds=3600) <= expires <= after + timedelta(seconds=3600)


def test_message_ttl_none_never_expires(produced):
    with override_cqrs(master={'CQRS_MESSAGE_TTL': None}):
        SimplestModel.objects.create(id=1)

    assert produced[0].expires is None
    assert SimplestReplica.objects.filter(pk=1).exists()


# --- revisions ------------------------------------------------------------------------------


def test_create_has_revision_zero_and_each_update_adds_one(produced):
    obj = SimplestModel.objects.create(id=1, name='a')
    assert db_revision(SimplestModel, 1) == 0

    for expected in (1, 2, 3):
        obj.name = f'v{expected}'
        obj.save()
        assert db_revision(SimplestModel, 1) == expected
        assert produced[-1].instance_data['cqrs_revision'] == expected
        assert SimplestReplica.objects.get(pk=1).cqrs_revision == expected

    assert [p.instance_data['cqrs_revision'] for p in produced] == [0, 1, 2, 3]


def test_revision_is_bumped_atomically_in_sql(produced):
    SimplestModel.objects.create(id=1, name='a')
    copy_a = SimplestModel.objects.get(pk=1)
    copy_b = SimplestModel.objects.get(pk=1)

    with CaptureQueriesContext(connection) as ctx:
        copy_a.save()
    updates = [q['sql'] for q in ctx.captured_queries if q['sql'].startswith('UPDATE')]
    master_updates = [sql for sql in updates if 'dj_master_simplestmodel' in sql]
    assert master_updates
    assert re.search(r'"cqrs_revision" = \(.*"cqrs_revision" \+ 1\)', master_updates[0])

    # The stale copy still read revision 0, but the increment happens in SQL: no lost update.
    copy_b.save()
    assert db_revision(SimplestModel, 1) == 2
    assert [p.instance_data['cqrs_revision'] for p in produced] == [0, 1, 2]
    assert SimplestReplica.objects.get(pk=1).cqrs_revision == 2


def test_three_saves_in_one_transaction_send_one_message(produced):
    obj = SimplestModel.objects.create(id=1, name='start')
    produced.clear()

    with transaction.atomic():
        for name in ('one', 'two', 'three'):
            obj.name = name
            obj.save()
        assert produced == []

    assert len(produced) == 1
    assert produced[0].instance_data['name'] == 'three'
    assert produced[0].instance_data['cqrs_revision'] == 1
    assert db_revision(SimplestModel, 1) == 1
    replica = SimplestReplica.objects.get(pk=1)
    assert (replica.name, replica.cqrs_revision) == ('three', 1)


def test_create_and_updates_in_one_transaction_send_one_message_with_revision_zero(produced):
    with transaction.atomic():
        obj = SimplestModel.objects.create(id=1, name='start')
        obj.name = 'end'
        obj.save()
        obj.save()

    assert len(produced) == 1
    assert produced[0].instance_data['name'] == 'end'
    assert produced[0].instance_data['cqrs_revision'] == 0
    assert db_revision(SimplestModel, 1) == 0
    assert SimplestReplica.objects.get(pk=1).name == 'end'


def test_cqrs_saves_count_inside_transaction():
    obj = SimplestModel.objects.create(id=1)
    assert obj.cqrs_saves_count == 0
    assert obj.is_initial_cqrs_save

    with transaction.atomic():
        obj.save()
        assert obj.cqrs_saves_count == 1
        assert obj.is_initial_cqrs_save
        obj.save()
        assert obj.cqrs_saves_count == 2
        assert not obj.is_initial_cqrs_save

    assert obj.cqrs_saves_count == 0
    assert obj.is_initial_cqrs_save


def test_rolled_back_transaction_sends_nothing(produced):
    obj = SimplestModel.objects.create(id=1, name='start')
    produced.clear()

    with pytest.raises(RuntimeError), transaction.atomic():
        obj.name = 'rolled back'
        obj.save()
        raise RuntimeError('boom')

    assert produced == []
    assert db_revision(SimplestModel, 1) == 0
    assert SimplestReplica.objects.get(pk=1).name == 'start'

    # The next save after the rollback publishes again.
    obj.name = 'after'
    obj.save()
    assert len(produced) == 1
    assert produced[0].instance_data['name'] == 'after'
    assert produced[0].instance_data['cqrs_revision'] == 1
    assert db_revision(SimplestModel, 1) == 1
    replica = SimplestReplica.objects.get(pk=1)
    assert (replica.name, replica.cqrs_revision) == ('after', 1)


def test_next_transaction_after_rollback_publishes(produced):
    obj = SimplestModel.objects.create(id=1, name='start')
    produced.clear()

    with pytest.raises(RuntimeError), transaction.atomic():
        obj.save()
        raise RuntimeError('boom')

    with transaction.atomic():
        obj.name = 'again'
        obj.save()

    assert len(produced) == 1
    assert produced[0].instance_data['name'] == 'again'
    assert produced[0].instance_data['cqrs_revision'] == 1
    assert SimplestReplica.objects.get(pk=1).name == 'again'


def test_savepoint_rollback_inside_outer_transaction(produced):
    kept = SimplestModel.objects.create(id=1, name='kept')
    dropped = SimplestModel.objects.create(id=2, name='dropped')
    produced.clear()

    with transaction.atomic():
        kept.name = 'kept-new'
        kept.save()
        try:
            with transaction.atomic():
                dropped.name = 'dropped-new'
                dropped.save()
                raise RuntimeError('inner')
        except RuntimeError:
            pass

    assert [p.pk for p in produced] == [1]
    assert produced[0].instance_data['name'] == 'kept-new'
    assert db_revision(SimplestModel, 2) == 0
    assert SimplestReplica.objects.get(pk=2).name == 'dropped'
    assert SimplestReplica.objects.get(pk=1).name == 'kept-new'


def test_save_after_savepoint_rollback_in_same_outer_transaction(produced):
    obj = SimplestModel.objects.create(id=1, name='start')
    produced.clear()

    with transaction.atomic():
        try:
            with transaction.atomic():
                obj.name = 'inner'
                obj.save()
                raise RuntimeError('inner')
        except RuntimeError:
            pass
        obj.name = 'outer'
        obj.save()

    assert len(produced) == 1
    assert produced[0].instance_data['name'] == 'outer'
    assert produced[0].instance_data['cqrs_revision'] == 1
    assert db_revision(SimplestModel, 1) == 1
    replica = SimplestReplica.objects.get(pk=1)
    assert (replica.name, replica.cqrs_revision) == ('outer', 1)


def test_two_instances_in_one_transaction_send_two_messages(produced):
    with transaction.atomic():
        SimplestModel.objects.create(id=1, name='a')
        SimplestModel.objects.create(id=2, name='b')
        assert produced == []

    assert sorted(p.pk for p in produced) == [1, 2]
    assert set(SimplestReplica.objects.values_list('name', flat=True)) == {'a', 'b'}


# --- update_fields --------------------------------------------------------------------------


def test_save_update_fields_does_not_publish_nor_bump(produced):
    obj = SimplestModel.objects.create(id=1, name='start')
    produced.clear()

    obj.name = 'partial'
    obj.save(update_fields=['name'])

    assert produced == []
    assert SimplestModel.objects.get(pk=1).name == 'partial'
    assert db_revision(SimplestModel, 1) == 0
    assert SimplestReplica.objects.get(pk=1).name == 'start'


def test_save_update_fields_with_update_cqrs_fields_publishes(produced):
    obj = SimplestModel.objects.create(id=1, name='start')
    produced.clear()

    obj.name = 'partial'
    obj.save(update_fields=['name'], update_cqrs_fields=True)

    assert len(produced) == 1
    assert produced[0].instance_data['name'] == 'partial'
    assert produced[0].instance_data['cqrs_revision'] == 1
    assert db_revision(SimplestModel, 1) == 1
    replica = SimplestReplica.objects.get(pk=1)
    assert (replica.name, replica.cqrs_revision) == ('partial', 1)


def test_save_update_fields_with_update_cqrs_fields_updates_cqrs_updated(produced):
    obj = SimplestModel.objects.create(id=1, name='start')
    before = SimplestModel.objects.get(pk=1).cqrs_updated

    obj.name = 'partial'
    obj.save(update_fields=['name'], update_cqrs_fields=True)

    assert SimplestModel.objects.get(pk=1).cqrs_updated > before


def test_save_update_fields_with_auto_update_fields_setting_publishes(produced):
    obj = SimplestModel.objects.create(id=1, name='start')
    produced.clear()

    with override_cqrs(master={'CQRS_AUTO_UPDATE_FIELDS': True}):
        obj.name = 'auto'
        obj.save(update_fields=['name'])

    assert len(produced) == 1
    assert produced[0].instance_data['name'] == 'auto'
    assert produced[0].instance_data['cqrs_revision'] == 1
    assert db_revision(SimplestModel, 1) == 1
    assert SimplestReplica.objects.get(pk=1).name == 'auto'


def test_auto_update_fields_setting_can_be_overridden_per_save(produced):
    obj = SimplestModel.objects.create(id=1, name='start')
    produced.clear()

    with override_cqrs(master={'CQRS_AUTO_UPDATE_FIELDS': True}):
        obj.name = 'quiet'
        obj.save(update_fields=['name'], update_cqrs_fields=False)

    assert produced == []
    assert db_revision(SimplestModel, 1) == 0


# --- is_sync_instance / CQRS_PRODUCE ---------------------------------------------------------


def test_is_sync_instance_false_is_never_published_but_revision_counts(produced):
    obj = SometimesSyncedModel.objects.create(name='private one')
    obj.name = 'private two'
    obj.save()

    assert produced == []
    assert not SometimesReplica.objects.exists()
    assert db_revision(SometimesSyncedModel, obj.pk) == 1
    assert obj.cqrs_sync() is True  # as django-cqrs: True, though nothing is sent
    assert produced == []

    obj.name = 'public'
    obj.save()
    assert len(produced) == 1
    assert produced[0].instance_data['cqrs_revision'] == 2
    assert SometimesReplica.objects.get(pk=obj.pk).name == 'public'


def test_is_sync_instance_false_delete_is_not_published(produced):
    obj = SometimesSyncedModel.objects.create(name='private')
    obj.delete()
    assert produced == []


def test_no_produce_model_publishes_nothing(produced):
    obj = NoProduceModel.objects.create(name='a')
    obj.name = 'b'
    obj.save()
    assert db_revision(NoProduceModel, obj.pk) == 1

    assert obj.cqrs_sync() is True  # as django-cqrs: True, though nothing is sent
    NoProduceModel.cqrs.bulk_create([NoProduceModel(name='c')])
    obj.delete()

    assert produced == []


# --- meta -----------------------------------------------------------------------------------


def test_model_meta_is_sent_and_given_to_replica(produced, recorded):
    obj = MetaModel.objects.create(name='m1')

    assert produced[0].meta == {'model_meta': 'm1', 'signal_type': 'SAVE'}
    assert recorded == [
        {'cqrs_id': 'with_meta', 'meta': {'model_meta': 'm1', 'signal_type': 'SAVE'}}
    ]
    assert MetaReplica.objects.get(pk=obj.pk).name == 'm1'

    obj.name = 'm2'
    obj.save()
    assert produced[1].meta == {'model_meta': 'm2', 'signal_type': 'SAVE'}
    assert recorded[1] == {
        'cqrs_id': 'with_meta',
        'meta': {'model_meta': 'm2', 'signal_type': 'SAVE'},
    }

    pk = obj.pk
    obj.delete()
    assert produced[2].meta == {'model_meta': 'm2', 'signal_type': 'DELETE'}
    assert recorded[2] == {
        'cqrs_id': 'with_meta',
        'meta': {'model_meta': 'm2', 'signal_type': 'DELETE'},
        'deleted': pk,
    }


def test_no_meta_by_default(produced):
    SimplestModel.objects.create(id=1)
    # An empty object, as the original library sends it.
    assert produced[0].meta == {}


@pytest.mark.parametrize('func', [meta_function, 'tests.test_master.meta_function'])
def test_meta_function_setting(produced, func):
    with override_cqrs(master={'meta_function': func}):
        obj = TrackedModel.objects.create(name='a')
        obj.name = 'b'
        obj.save()
        obj_pk = obj.pk
        obj.delete()

    assert [p.meta for p in produced] == [
        {'from': 'meta_function', 'signal_type': 'SAVE'},
        {'from': 'meta_function', 'signal_type': 'SAVE'},
        {'from': 'meta_function', 'signal_type': 'DELETE'},
    ]
    assert len(meta_calls) == 3
    for call, payload in zip(meta_calls, produced, strict=True):
        assert set(call) == {'obj', 'instance_data', 'previous_data', 'signal_type'}
        assert call['obj'] is obj
        assert call['signal_type'] == payload.signal_type
        assert call['instance_data'] == payload.instance_data
        assert call['previous_data'] == payload.previous_data
    assert meta_calls[1]['previous_data'] == {'name': 'a'}
    assert meta_calls[1]['instance_data']['name'] == 'b'
    assert meta_calls[2]['instance_data']['id'] == obj_pk


def test_model_get_cqrs_meta_wins_over_meta_function(produced):
    with override_cqrs(master={'meta_function': meta_function}):
        MetaModel.objects.create(name='own')
    assert produced[0].meta == {'model_meta': 'own', 'signal_type': 'SAVE'}
    assert meta_calls == []


# --- correlation_function -------------------------------------------------------------------


def test_correlation_id_from_correlation_function(produced):
    with override_cqrs(master={'correlation_function': correlation_function}):
        obj = SimplestModel.objects.create(id=7)
        obj.cqrs_sync(queue='replica')
        obj.delete()

    assert [p.correlation_id for p in produced] == [
        'SAVE:simplest:7:None',
        'SYNC:simplest:7:replica',
        'DELETE:simplest:7:None',
    ]
    assert correlation_calls == [
        ('SAVE', 'simplest', 7, None),
        ('SYNC', 'simplest', 7, 'replica'),
        ('DELETE', 'simplest', 7, None),
    ]


def test_correlation_function_as_dotted_path(produced):
    with override_cqrs(master={'correlation_function': 'tests.test_master.correlation_function'}):
        obj = UUIDPkModel.objects.create()
    assert produced[0].correlation_id == f'SAVE:uuid_pk:{obj.pk}:None'
    assert correlation_calls == [('SAVE', 'uuid_pk', obj.pk, None)]


def test_no_correlation_id_by_default(produced):
    SimplestModel.objects.create(id=1)
    assert produced[0].correlation_id is None


# --- delete ---------------------------------------------------------------------------------


def test_delete_payload_instance_data(produced):
    obj = SimplestModel.objects.create(id=3, name='x')
    obj.save()
    obj.save()
    assert db_revision(SimplestModel, 3) == 2

    before = datetime.now(tz=timezone.utc)
    obj.delete()
    after = datetime.now(tz=timezone.utc)

    payload = produced[-1]
    assert payload.signal_type == SignalType.DELETE
    assert payload.pk == 3
    assert set(payload.instance_data) == {'id', 'cqrs_revision', 'cqrs_updated'}
    assert payload.instance_data['id'] == 3
    assert payload.instance_data['cqrs_revision'] == 3
    assert isinstance(payload.instance_data['cqrs_updated'], str)
    assert before <= parse_datetime(payload.instance_data['cqrs_updated']) <= after
    assert payload.previous_data is None


def test_custom_delete_data(produced, recorded):
    obj = CustomDeleteModel.objects.create(name='gone')
    pk = obj.pk
    assert CustomDeleteReplica.objects.filter(pk=pk).exists()

    obj.delete()

    payload = produced[-1]
    assert payload.signal_type == SignalType.DELETE
    assert set(payload.instance_data) == {'id', 'cqrs_revision', 'cqrs_updated', 'custom'}
    assert payload.instance_data['id'] == pk
    assert payload.instance_data['cqrs_revision'] == 1
    assert payload.instance_data['custom'] == {'name': 'gone'}
    assert recorded == [{'cqrs_id': 'custom_delete', 'custom': {'name': 'gone'}}]
    assert not CustomDeleteReplica.objects.filter(pk=pk).exists()


def test_delete_in_transaction_is_sent_on_commit(produced):
    obj = SimplestModel.objects.create(id=1)
    produced.clear()

    with transaction.atomic():
        obj.delete()
        assert produced == []
        assert SimplestReplica.objects.filter(pk=1).exists()

    assert signal_types(produced) == [SignalType.DELETE]
    assert not SimplestReplica.objects.filter(pk=1).exists()


def test_rolled_back_delete_sends_nothing(produced):
    obj = SimplestModel.objects.create(id=1)
    produced.clear()

    with pytest.raises(RuntimeError), transaction.atomic():
        obj.delete()
        raise RuntimeError('boom')

    assert produced == []
    assert SimplestReplica.objects.filter(pk=1).exists()


def test_update_then_delete_in_one_transaction_delete_revision(produced):
    obj = SimplestModel.objects.create(id=1, name='a')
    produced.clear()

    with transaction.atomic():
        obj.name = 'b'
        obj.save()
        obj.delete()

    deletes = [p for p in produced if p.signal_type == SignalType.DELETE]
    assert len(deletes) == 1
    # The row reached revision 1 in this transaction: the DELETE carries revision + 1.
    assert deletes[0].instance_data['cqrs_revision'] == 2
    assert not SimplestReplica.objects.filter(pk=1).exists()


def test_queryset_delete_publishes_per_row(produced):
    SimplestModel.objects.create(id=1)
    SimplestModel.objects.create(id=2)
    produced.clear()

    SimplestModel.objects.all().delete()

    assert signal_types(produced) == [SignalType.DELETE, SignalType.DELETE]
    assert sorted(p.pk for p in produced) == [1, 2]
    assert not SimplestReplica.objects.exists()


# --- cqrs_sync ------------------------------------------------------------------------------


def test_cqrs_sync_publishes_sync(produced):
    obj = SimplestModel.objects.create(id=1, name='db')
    produced.clear()
    SimplestReplica.objects.filter(pk=1).update(name='drifted')

    assert obj.cqrs_sync() is True

    assert len(produced) == 1
    payload = produced[0]
    assert payload.signal_type == SignalType.SYNC
    assert payload.queue is None
    assert payload.instance_data['name'] == 'db'
    assert payload.instance_data['cqrs_revision'] == 0
    # A SYNC is applied even with an equal revision.
    assert SimplestReplica.objects.get(pk=1).name == 'db'


def test_cqrs_sync_sends_database_state(produced):
    obj = SimplestModel.objects.create(id=1, name='db')
    produced.clear()
    obj.name = 'unsaved in memory'

    assert obj.cqrs_sync() is True
    assert produced[0].instance_data['name'] == 'db'


def test_cqrs_sync_to_one_queue(produced):
    obj = SimplestModel.objects.create(id=1, name='a')
    produced.clear()

    assert obj.cqrs_sync(queue='replica') is True

    assert produced[0].signal_type == SignalType.SYNC
    assert produced[0].queue == 'replica'


def test_cqrs_sync_does_not_bump_revision(produced):
    obj = SimplestModel.objects.create(id=1)
    obj.cqrs_sync()
    obj.cqrs_sync()
    assert db_revision(SimplestModel, 1) == 0
    assert [p.instance_data['cqrs_revision'] for p in produced] == [0, 0, 0]


def test_cqrs_sync_unsaved_instance_returns_false(produced):
    assert SimplestModel(id=5, name='new').cqrs_sync() is False
    assert produced == []


def test_cqrs_sync_unsaved_instance_with_existing_pk_returns_false(produced):
    SimplestModel.objects.create(id=5, name='in db')
    produced.clear()

    assert SimplestModel(id=5, name='unsaved').cqrs_sync() is False
    assert produced == []


def test_cqrs_sync_vanished_instance_returns_false(produced):
    obj = SimplestModel.objects.create(id=1)
    SimplestModel.objects.filter(pk=1)._raw_delete(using='default')
    produced.clear()

    assert obj.cqrs_sync() is False
    assert produced == []


def test_cqrs_sync_vanished_serializer_instance_publishes_from_memory(produced):
    author = Author.objects.create(name='a')
    Author.objects.filter(pk=author.pk)._raw_delete(using='default')
    produced.clear()

    assert author.cqrs_sync() is True
    assert signal_types(produced) == [SignalType.SYNC]
    assert produced[0].instance_data['name'] == 'a'


def test_cqrs_sync_serializer_model(produced):
    publisher = Publisher.objects.create(name='pub')
    author = Author.objects.create(name='a', publisher=publisher)
    produced.clear()

    assert author.cqrs_sync() is True
    assert produced[0].signal_type == SignalType.SYNC
    assert produced[0].instance_data['publisher'] == {'id': publisher.pk, 'name': 'pub'}
    assert AuthorReplica.objects.get(pk=author.pk).publisher_id == publisher.pk


def test_cqrs_sync_in_transaction_is_sent_on_commit(produced):
    obj = SimplestModel.objects.create(id=1)
    produced.clear()

    with transaction.atomic():
        assert obj.cqrs_sync() is True
        assert produced == []

    assert signal_types(produced) == [SignalType.SYNC]


# --- RawMasterMixin registered by hand ------------------------------------------------------


def test_proxy_model_publishes_under_its_own_cqrs_id(produced):
    obj = ProxyModel.objects.create(name='proxied')

    assert len(produced) == 1
    assert produced[0].cqrs_id == 'proxy'
    assert ProxyReplica.objects.get(pk=obj.pk).name == 'proxied'

    obj.name = 'proxied 2'
    obj.save()
    assert produced[1].instance_data['cqrs_revision'] == 1
    replica = ProxyReplica.objects.get(pk=obj.pk)
    assert (replica.name, replica.cqrs_revision) == ('proxied 2', 1)

    obj.delete()
    assert produced[2].signal_type == SignalType.DELETE
    assert not ProxyReplica.objects.exists()


def test_unregistered_raw_base_does_not_publish(produced):
    PlainBase.objects.create(name='plain')
    assert produced == []
    assert not ProxyReplica.objects.exists()


def test_tree_model_publishes_with_tracked_fields(produced, recorded):
    root = TreeModel.objects.create(name='root')
    child = TreeModel.objects.create(name='child', parent=root)

    assert [p.cqrs_id for p in produced] == ['tree', 'tree']
    assert produced[1].instance_data['parent'] == root.pk
    assert produced[1].previous_data == {'name': None, 'parent_id': None}
    assert TreeReplica.objects.get(pk=root.pk).name == 'root'
    assert TreeReplica.objects.get(pk=child.pk).name == 'child'

    child = TreeModel.objects.get(pk=child.pk)
    child.name = 'moved'
    child.parent = None
    child.save()

    payload = produced[-1]
    assert payload.previous_data == {'name': 'child', 'parent': root.pk}
    assert payload.instance_data['parent'] is None
    assert payload.instance_data['cqrs_revision'] == 1
    assert recorded[-1] == {
        'cqrs_id': 'tree',
        'previous_data': {'name': 'child', 'parent': root.pk},
    }
    replica = TreeReplica.objects.get(pk=child.pk)
    assert (replica.name, replica.cqrs_revision) == ('moved', 1)


# --- failures -------------------------------------------------------------------------------


def test_instance_deleted_before_commit_is_skipped_with_error_log(produced, cqrs_logs):
    with transaction.atomic():
        author = Author.objects.create(name='ghost')
        Author.objects.filter(pk=author.pk)._raw_delete(using='default')

    assert produced == []
    assert not AuthorReplica.objects.exists()
    errors = [r for r in cqrs_logs.records if r.levelno >= logging.ERROR]
    assert errors
    assert any('author' in r.getMessage() and str(author.pk) in r.getMessage() for r in errors)


def test_updated_instance_deleted_before_commit_is_skipped(produced, cqrs_logs):
    obj = SimplestModel.objects.create(id=1, name='a')
    produced.clear()

    with transaction.atomic():
        obj.name = 'b'
        obj.save()
        SimplestModel.objects.filter(pk=1)._raw_delete(using='default')

    assert produced == []
    assert SimplestReplica.objects.get(pk=1).name == 'a'
    errors = [r for r in cqrs_logs.records if r.levelno >= logging.ERROR]
    assert any('simplest' in r.getMessage() for r in errors)


def test_transport_error_is_logged_not_raised(monkeypatch, cqrs_logs):
    def produce(payload):
        raise RuntimeError('broker is down')

    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(produce))

    obj = SimplestModel.objects.create(id=1, name='a')  # does not raise
    with transaction.atomic():
        obj.name = 'b'
        obj.save()
    obj.delete()

    assert not SimplestModel.objects.exists()
    errors = [r for r in cqrs_logs.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3
    for record in errors:
        assert 'simplest' in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)


def test_transport_error_does_not_stop_other_messages_of_the_transaction(monkeypatch, produced):
    original = LoopbackTransport.produce

    def produce(payload):
        if payload.pk == 1:
            raise RuntimeError('broker is down')
        return original(payload)

    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(produce))

    with transaction.atomic():
        SimplestModel.objects.create(id=1)
        SimplestModel.objects.create(id=2)

    assert list(SimplestReplica.objects.values_list('pk', flat=True)) == [2]
