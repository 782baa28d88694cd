"""Replica side: ``ReplicaManager`` / ``ReplicaMixin`` applying SAVE, SYNC and DELETE data."""

import copy
import logging
from datetime import datetime, timezone

import pytest
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models.query import QuerySet
from django.test import override_settings

from dj_cqrs.constants import SignalType
from dj_cqrs.controller.consumer import consume
from dj_cqrs.mixins import ReplicaMixin
from dj_cqrs.registries import ReplicaRegistry
from tests.dj_replica.models import (
    AuthorReplica,
    AutoFieldsReplica,
    DirectSyncsReplica,
    LockedReplica,
    MappedReplica,
    MetaReplica,
    NoDBReplica,
    PublisherReplica,
    RawReplica,
    SimplestReplica,
)
from tests.harness import PAYLOAD_UPDATED, logged, override_cqrs, payload
from tests.harness import instance_data as data

pytestmark = pytest.mark.django_db

UPDATED_DT = datetime.fromisoformat(PAYLOAD_UPDATED)  # the default of ``data``


def save(cqrs_id, instance_data, **kwargs):
    return consume(payload(SignalType.SAVE, cqrs_id, instance_data, **kwargs))


def sync(cqrs_id, instance_data, **kwargs):
    return consume(payload(SignalType.SYNC, cqrs_id, instance_data, **kwargs))


def delete(cqrs_id, instance_data, **kwargs):
    return consume(payload(SignalType.DELETE, cqrs_id, instance_data, **kwargs))


def has_log(caplog, level, *words):
    """True when one ``django-cqrs`` record of ``level`` contains every word (case-insensitive)."""
    return any(all(w.lower() in m.lower() for w in words) for m in logged(caplog, level))


def make_simplest(pk=1, rev=3, name='stored'):
    return SimplestReplica.objects.create(
        id=pk, name=name, cqrs_revision=rev, cqrs_updated=UPDATED_DT
    )


# --- SAVE / SYNC revision rules -------------------------------------------------------------


def test_save_creates_row(cqrs_logs):
    result = save('simplest', data(1, 0, name='first'))

    assert result
    assert isinstance(result, SimplestReplica)
    row = SimplestReplica.objects.get(id=1)
    assert row.name == 'first'
    assert row.cqrs_revision == 0
    assert row.cqrs_updated == UPDATED_DT
    assert not logged(cqrs_logs, 'ERROR')


def test_newer_save_updates_row(cqrs_logs):
    save('simplest', data(1, 0, name='first'))
    result = save('simplest', data(1, 1, updated='2024-05-02 10:00:00+00:00', name='second'))

    assert result
    assert SimplestReplica.objects.count() == 1
    row = SimplestReplica.objects.get(id=1)
    assert row.name == 'second'
    assert row.cqrs_revision == 1
    assert row.cqrs_updated == datetime(2024, 5, 2, 10, 0, tzinfo=timezone.utc)
    assert not logged(cqrs_logs, 'ERROR')
    assert not logged(cqrs_logs, 'WARNING')


def test_out_of_order_save_is_ignored_but_handled(cqrs_logs):
    make_simplest(rev=3, name='stored')

    result = save('simplest', data(1, 2, name='older'))

    assert result, 'an out-of-order message counts as handled'
    row = SimplestReplica.objects.get(id=1)
    assert row.name == 'stored'
    assert row.cqrs_revision == 3
    assert has_log(cqrs_logs, 'ERROR', 'wrong', 'order', 'simplest')


def test_duplicate_save_is_ignored(cqrs_logs):
    make_simplest(rev=3, name='stored')

    result = save('simplest', data(1, 3, name='duplicate'))

    assert result
    row = SimplestReplica.objects.get(id=1)
    assert row.name == 'stored'
    assert row.cqrs_revision == 3
    assert any('duplicate' in m.lower() for m in logged(cqrs_logs))


def test_duplicate_of_revision_zero_warns_about_creation_race(cqrs_logs):
    make_simplest(rev=0, name='stored')

    assert save('simplest', data(1, 0, name='again'))

    assert SimplestReplica.objects.get(id=1).name == 'stored'
    assert any('duplicate' in m.lower() for m in logged(cqrs_logs))
    assert has_log(cqrs_logs, 'WARNING', 'race')


def test_revision_jump_is_applied_with_warning(cqrs_logs):
    make_simplest(rev=3, name='stored')

    result = save('simplest', data(1, 6, name='jumped'))

    assert result
    row = SimplestReplica.objects.get(id=1)
    assert row.name == 'jumped'
    assert row.cqrs_revision == 6
    assert has_log(cqrs_logs, 'WARNING', 'lost', 'simplest')
    # 6 - 3 - 1 = 2 revisions never arrived
    assert has_log(cqrs_logs, 'WARNING', 'lost', '2')


def test_next_revision_gives_no_lost_warning(cqrs_logs):
    make_simplest(rev=3)

    assert save('simplest', data(1, 4, name='next'))

    assert SimplestReplica.objects.get(id=1).name == 'next'
    assert not has_log(cqrs_logs, 'WARNING', 'lost')


def test_older_sync_is_applied_with_downgrade_warning(cqrs_logs):
    make_simplest(rev=5, name='stored')

    result = sync('simplest', data(1, 2, name='synced'))

    assert result
    row = SimplestReplica.objects.get(id=1)
    assert row.name == 'synced'
    assert row.cqrs_revision == 2
    assert has_log(cqrs_logs, 'WARNING', 'downgrade')
    assert not has_log(cqrs_logs, 'ERROR', 'wrong', 'order')


def test_sync_with_equal_revision_is_applied(cqrs_logs):
    make_simplest(rev=5, name='stored')

    result = sync('simplest', data(1, 5, name='synced'))

    assert result
    row = SimplestReplica.objects.get(id=1)
    assert row.name == 'synced'
    assert row.cqrs_revision == 5
    assert not any('duplicate' in m.lower() for m in logged(cqrs_logs))


def test_sync_creates_missing_row():
    assert sync('simplest', data(9, 4, name='new'))

    row = SimplestReplica.objects.get(id=9)
    assert (row.name, row.cqrs_revision) == ('new', 4)


def test_sync_flag_reaches_hooks(mocker):
    spy_create = mocker.spy(SimplestReplica, 'cqrs_create')
    spy_save = mocker.spy(SimplestReplica, 'cqrs_save')

    sync('simplest', data(1, 0, name='a'))

    assert spy_save.call_args.kwargs['sync'] is True
    assert spy_create.call_args.args[0] is True


def test_manager_save_instance_applies_revision_rules():
    created = SimplestReplica.cqrs.save_instance(data(1, 0, name='a'))
    assert isinstance(created, SimplestReplica)

    SimplestReplica.cqrs.save_instance(data(1, 1, name='b'))
    assert SimplestReplica.objects.get(id=1).name == 'b'

    SimplestReplica.cqrs.save_instance(data(1, 0, name='old'))
    assert SimplestReplica.objects.get(id=1).name == 'b'

    SimplestReplica.cqrs.save_instance(data(1, 0, name='old sync'), sync=True)
    assert SimplestReplica.objects.get(id=1).name == 'old sync'


def test_model_cqrs_save_classmethod():
    result = SimplestReplica.cqrs_save(data(4, 2, name='direct'))

    assert result
    row = SimplestReplica.objects.get(id=4)
    assert (row.name, row.cqrs_revision) == ('direct', 2)


# --- data checks ----------------------------------------------------------------------------


@pytest.mark.parametrize('missing', ['cqrs_revision', 'cqrs_updated'])
def test_save_without_sync_fields_is_not_applied(cqrs_logs, missing):
    instance_data = data(1, 0, name='a')
    del instance_data[missing]

    result = save('simplest', instance_data)

    assert not result
    assert not SimplestReplica.objects.exists()
    assert has_log(cqrs_logs, 'ERROR', 'CQRS sync fields are not provided in data (simplest).')


@pytest.mark.parametrize('missing', ['cqrs_revision', 'cqrs_updated'])
def test_save_without_sync_fields_does_not_update(cqrs_logs, missing):
    make_simplest(rev=1, name='stored')
    instance_data = data(1, 2, name='new')
    del instance_data[missing]

    assert not SimplestReplica.cqrs_save(instance_data)

    assert SimplestReplica.objects.get(id=1).name == 'stored'
    assert logged(cqrs_logs, 'ERROR')


def test_save_without_pk_is_not_applied(cqrs_logs):
    instance_data = data(1, 0, name='a')
    del instance_data['id']

    result = save('simplest', instance_data, pk=1)

    assert not result
    assert not SimplestReplica.objects.exists()
    assert logged(cqrs_logs, 'ERROR')


def test_unknown_keys_are_dropped(mocker):
    spy = mocker.spy(SimplestReplica, 'cqrs_create')

    result = save('simplest', data(1, 0, name='a', not_a_field=5, nested={'x': 1}))

    assert result
    assert SimplestReplica.objects.get(id=1).name == 'a'
    mapped = spy.call_args.args[1]
    assert 'not_a_field' not in mapped
    assert 'nested' not in mapped


def test_unknown_keys_are_dropped_on_update():
    make_simplest(rev=0)

    assert save('simplest', data(1, 1, name='b', not_a_field=5))

    assert SimplestReplica.objects.get(id=1).name == 'b'


def test_missing_required_field_is_not_applied(cqrs_logs):
    # AutoFieldsReplica: 'name' and 'flag' are NOT NULL without a default.
    result = save('auto_fields', data(1, 0, name='a'))

    assert not result
    assert not AutoFieldsReplica.objects.exists()
    assert has_log(cqrs_logs, 'ERROR', 'flag')


def test_nullable_fields_may_be_missing():
    assert save('auto_fields', data(1, 0, name='a', flag=True))

    row = AutoFieldsReplica.objects.get(id=1)
    assert row.flag is True
    assert row.birth_date is None


def test_typed_values_are_stored():
    instance_data = data(
        1,
        0,
        name='typed',
        flag=False,
        created_at='2023-01-02 03:04:05+00:00',
        birth_date='2000-02-29',
        at_time='12:30:00',
        token='c5b3b2a4-8f4f-4bb4-8a4e-7d2f0e2c8f11',
        amount='12.50',
        ratio=0.25,
    )

    assert save('auto_fields', instance_data)

    row = AutoFieldsReplica.objects.get(id=1)
    assert str(row.birth_date) == '2000-02-29'
    assert str(row.token) == 'c5b3b2a4-8f4f-4bb4-8a4e-7d2f0e2c8f11'
    assert str(row.amount) == '12.50'
    assert row.ratio == 0.25


def test_foreign_key_given_as_raw_id(monkeypatch):
    """Without custom serialization, an FK value from the master is the raw id."""
    monkeypatch.setattr(AuthorReplica, 'CQRS_CUSTOM_SERIALIZATION', False)
    monkeypatch.setattr(
        AuthorReplica, 'cqrs_create', classmethod(ReplicaMixin.cqrs_create.__func__)
    )
    monkeypatch.setattr(AuthorReplica, 'cqrs_update', ReplicaMixin.cqrs_update)
    PublisherReplica.objects.create(id=5, name='P5')
    PublisherReplica.objects.create(id=6, name='P6')

    assert save('author', data(1, 0, name='a', publisher=5, extra='dropped'))
    assert AuthorReplica.objects.get(id=1).publisher_id == 5

    assert save('author', data(1, 1, name='a', publisher=6))
    assert AuthorReplica.objects.get(id=1).publisher_id == 6

    assert save('author', data(2, 0, name='b', publisher_id=5))
    assert AuthorReplica.objects.get(id=2).publisher.name == 'P5'


# --- CQRS_MAPPING -----------------------------------------------------------------------------


def test_mapping_renames_master_fields():
    result = save('filtered', data(7, 0, name='mapped', other='ignored'))

    assert result
    row = MappedReplica.objects.get(remote_id=7)
    assert row.title == 'mapped'
    assert row.cqrs_revision == 0


def test_mapping_on_update():
    save('filtered', data(7, 0, name='first'))

    assert save('filtered', data(7, 1, name='second'))

    assert MappedReplica.objects.count() == 1
    row = MappedReplica.objects.get(remote_id=7)
    assert (row.title, row.cqrs_revision) == ('second', 1)


def test_mapping_with_missing_master_key_is_not_applied(cqrs_logs):
    result = save('filtered', data(7, 0, title='wrong key'))

    assert not result
    assert not MappedReplica.objects.exists()
    assert has_log(cqrs_logs, 'ERROR', 'name')


# --- CQRS_CUSTOM_SERIALIZATION ----------------------------------------------------------------


def test_custom_serialization_receives_nested_data(mocker):
    spy = mocker.spy(AuthorReplica, 'cqrs_create')
    instance_data = data(1, 0, name='author', publisher={'id': 3, 'name': 'Pub'}, books=[1, 2])

    result = save('author', instance_data)

    assert result
    author = AuthorReplica.objects.get(id=1)
    assert author.name == 'author'
    assert author.publisher_id == 3
    assert PublisherReplica.objects.get(id=3).name == 'Pub'
    mapped = spy.call_args.args[1]
    assert mapped['publisher'] == {'id': 3, 'name': 'Pub'}
    assert mapped['books'] == [1, 2], 'custom serialization keeps keys that are not fields'


def test_custom_serialization_update():
    save('author', data(1, 0, name='author', publisher={'id': 3, 'name': 'Pub'}))

    assert save('author', data(1, 1, name='renamed', publisher={'id': 3, 'name': 'Pub 2'}))
    author = AuthorReplica.objects.get(id=1)
    assert (author.name, author.cqrs_revision) == ('renamed', 1)
    assert PublisherReplica.objects.get(id=3).name == 'Pub 2'

    assert save('author', data(1, 2, name='renamed', publisher=None))
    assert AuthorReplica.objects.get(id=1).publisher is None


def test_custom_serialization_still_needs_sync_fields(cqrs_logs):
    instance_data = data(1, 0, name='author', publisher=None)
    del instance_data['cqrs_revision']

    assert not save('author', instance_data)
    assert not AuthorReplica.objects.exists()
    assert logged(cqrs_logs, 'ERROR')


# --- CQRS_SELECT_FOR_UPDATE -------------------------------------------------------------------


def _select_for_update_models(spy):
    return [call.args[0].model for call in spy.call_args_list]


def test_select_for_update_used_when_asked(mocker):
    LockedReplica.objects.create(id=1, name='stored', cqrs_revision=0, cqrs_updated=UPDATED_DT)
    spy = mocker.spy(QuerySet, 'select_for_update')

    assert save('locked', data(1, 1, name='updated'))
    assert save('locked', data(2, 0, name='created'))

    assert _select_for_update_models(spy).count(LockedReplica) == 2
    assert LockedReplica.objects.get(id=1).name == 'updated'
    assert LockedReplica.objects.get(id=2).name == 'created'


def test_select_for_update_not_used_by_default(mocker):
    make_simplest(rev=0)
    spy = mocker.spy(QuerySet, 'select_for_update')

    assert save('simplest', data(1, 1, name='updated'))
    assert save('simplest', data(2, 0, name='created'))

    assert SimplestReplica not in _select_for_update_models(spy)
    assert SimplestReplica.objects.get(id=1).name == 'updated'


# --- CQRS_META ----------------------------------------------------------------------------------


def test_meta_passed_to_hooks_when_enabled(recorded):
    meta = {'trace': 'abc', 'user': 7}

    assert save('with_meta', data(1, 0, name='a'), meta=meta)
    assert save('with_meta', data(1, 1, name='b'), meta={'trace': 'def'})
    assert delete('with_meta', data(1, 2), meta={'trace': 'ghi'})

    assert recorded == [
        {'cqrs_id': 'with_meta', 'meta': meta},
        {'cqrs_id': 'with_meta', 'meta': {'trace': 'def'}},
        {'cqrs_id': 'with_meta', 'meta': {'trace': 'ghi'}, 'deleted': 1},
    ]
    assert not MetaReplica.objects.exists()


def test_meta_passed_to_cqrs_save_when_enabled(mocker):
    spy = mocker.spy(MetaReplica, 'cqrs_save')

    save('with_meta', data(1, 0, name='a'), meta={'k': 'v'})

    assert spy.call_args.kwargs['meta'] == {'k': 'v'}


def test_meta_not_passed_when_disabled(mocker):
    spy_save = mocker.spy(SimplestReplica, 'cqrs_save')
    spy_create = mocker.spy(SimplestReplica, 'cqrs_create')
    spy_delete = mocker.spy(SimplestReplica, 'cqrs_delete')

    assert save('simplest', data(1, 0, name='a'), meta={'k': 'v'})
    assert delete('simplest', data(1, 1), meta={'k': 'v'})

    assert 'meta' not in spy_save.call_args.kwargs
    assert 'meta' not in spy_create.call_args.kwargs
    assert 'meta' not in spy_delete.call_args.kwargs
    assert {'k': 'v'} not in spy_save.call_args.args
    assert {'k': 'v'} not in spy_create.call_args.args


# --- CQRS_ONLY_DIRECT_SYNCS ---------------------------------------------------------------------


def test_only_direct_syncs_ignores_broadcast_sync(cqrs_logs):
    result = sync('direct_syncs', data(1, 0, name='broadcast'), queue=None)

    assert result, 'an ignored broadcast sync is handled, not failed'
    assert not DirectSyncsReplica.objects.exists()


def test_only_direct_syncs_ignores_sync_to_other_queue():
    assert sync('direct_syncs', data(1, 0, name='other'), queue='another_service')
    assert not DirectSyncsReplica.objects.exists()


def test_only_direct_syncs_applies_sync_to_own_queue():
    assert sync('direct_syncs', data(1, 0, name='direct'), queue='replica')
    assert DirectSyncsReplica.objects.get(id=1).name == 'direct'


def test_only_direct_syncs_applies_save():
    assert save('direct_syncs', data(1, 0, name='saved'))
    assert save('direct_syncs', data(1, 1, name='saved again'), queue=None)
    assert DirectSyncsReplica.objects.get(id=1).name == 'saved again'
    assert delete('direct_syncs', data(1, 2))
    assert not DirectSyncsReplica.objects.exists()


def test_broadcast_sync_applied_without_only_direct_syncs():
    assert sync('simplest', data(1, 0, name='broadcast'), queue=None)
    assert SimplestReplica.objects.get(id=1).name == 'broadcast'


# --- CQRS_NO_DB_OPERATIONS ----------------------------------------------------------------------


def test_no_db_operations_calls_hooks_without_db(recorded, mocker, django_assert_num_queries):
    atomic = mocker.spy(transaction, 'atomic')

    with django_assert_num_queries(0):
        assert save('no_db', data(1, 0, name='x'))
        assert sync('no_db', data(1, 1, name='y'))
        assert delete('no_db', data(1, 2))

    assert atomic.call_count == 0
    assert recorded == [
        {'cqrs_id': 'no_db', 'saved': data(1, 0, name='x'), 'sync': False},
        {'cqrs_id': 'no_db', 'saved': data(1, 1, name='y'), 'sync': True},
        {'cqrs_id': 'no_db', 'deleted': 1},
    ]
    assert not NoDBReplica.objects.exists()


# --- RawReplicaMixin ------------------------------------------------------------------------------


def test_raw_replica_is_registered():
    assert ReplicaRegistry.get_model_by_cqrs_id('raw') is RawReplica


def test_raw_replica_save_sync_delete(mocker, django_assert_num_queries):
    atomic = mocker.spy(transaction, 'atomic')

    with django_assert_num_queries(0):
        assert save('raw', data(1, 0, name='a'), meta={'m': 1})
        assert sync('raw', data(2, 0, name='b'))

        first = {'data': data(1, 0, name='a'), 'sync': False, 'meta': {'m': 1}}
        assert RawReplica.STORE[1] == first
        assert RawReplica.STORE[2] == {'data': data(2, 0, name='b'), 'sync': True, 'meta': None}

        assert delete('raw', data(1, 1), meta={'m': 2})
        assert 1 not in RawReplica.STORE
        assert 2 in RawReplica.STORE

        # The hook reports that nothing was deleted: the message failed.
        assert not delete('raw', data(1, 2))

    assert atomic.call_count == 0


def test_raw_replica_mixin_hooks_must_be_overridden():
    from dj_cqrs.mixins import RawReplicaMixin

    with pytest.raises(NotImplementedError):
        RawReplicaMixin.cqrs_save({})
    with pytest.raises(NotImplementedError):
        RawReplicaMixin.cqrs_delete({})


# --- DELETE -------------------------------------------------------------------------------------


def test_delete_removes_row():
    make_simplest(pk=1)
    make_simplest(pk=2)

    result = delete('simplest', data(1, 4))

    assert result is True
    assert list(SimplestReplica.objects.values_list('id', flat=True)) == [2]


def test_delete_of_missing_row_is_true():
    assert delete('simplest', data(404, 1)) is True


def test_delete_with_custom_data():
    make_simplest(pk=1)
    instance_data = data(1, 4, custom={'x': 1})

    assert delete('simplest', instance_data) is True
    assert not SimplestReplica.objects.exists()


@pytest.mark.parametrize('missing', ['cqrs_revision', 'cqrs_updated'])
def test_delete_without_sync_fields_fails(cqrs_logs, missing):
    make_simplest(pk=1)
    instance_data = data(1, 4)
    del instance_data[missing]

    assert not delete('simplest', instance_data)
    assert SimplestReplica.objects.filter(id=1).exists()
    assert logged(cqrs_logs, 'ERROR')


def test_delete_with_mapping_uses_master_id():
    MappedReplica.objects.create(remote_id=3, title='t', cqrs_revision=0, cqrs_updated=UPDATED_DT)

    assert delete('filtered', data(3, 1))
    assert not MappedReplica.objects.exists()


def test_cqrs_delete_classmethod():
    make_simplest(pk=8)

    assert SimplestReplica.cqrs_delete(data(8, 4))
    assert not SimplestReplica.objects.exists()


# --- retries --------------------------------------------------------------------------------------


def test_should_retry_defaults_from_settings():
    # tests.settings: CQRS_MAX_RETRIES = 5
    assert SimplestReplica.should_retry_cqrs(0) is True
    assert SimplestReplica.should_retry_cqrs(4) is True
    assert SimplestReplica.should_retry_cqrs(5) is False
    assert SimplestReplica.should_retry_cqrs(6, ValueError('x')) is False
    assert RawReplica.should_retry_cqrs(4) is True
    assert RawReplica.should_retry_cqrs(5) is False


def test_should_retry_forever_when_max_retries_is_none():
    with override_cqrs(replica={'CQRS_MAX_RETRIES': None}):
        assert SimplestReplica.should_retry_cqrs(0) is True
        assert SimplestReplica.should_retry_cqrs(10**6) is True


def test_should_never_retry_when_max_retries_is_zero():
    with override_cqrs(replica={'CQRS_MAX_RETRIES': 0}):
        assert SimplestReplica.should_retry_cqrs(0) is False
        assert SimplestReplica.should_retry_cqrs(1) is False


def test_should_retry_follows_changed_max_retries():
    with override_cqrs(replica={'CQRS_MAX_RETRIES': 2}):
        assert SimplestReplica.should_retry_cqrs(1) is True
        assert SimplestReplica.should_retry_cqrs(2) is False
    assert SimplestReplica.should_retry_cqrs(4) is True


def test_retry_delay_from_settings():
    # tests.settings: CQRS_RETRY_DELAY = 1
    assert SimplestReplica.get_cqrs_retry_delay(0) == 1
    assert SimplestReplica.get_cqrs_retry_delay(3) == 1
    with override_cqrs(replica={'CQRS_RETRY_DELAY': 7}):
        assert SimplestReplica.get_cqrs_retry_delay(3) == 7
        assert RawReplica.get_cqrs_retry_delay(0) == 7


def test_retry_defaults_when_replica_section_missing():
    conf = copy.deepcopy(settings.CQRS)
    conf.pop('replica', None)
    with override_settings(CQRS=conf):
        # Library defaults: CQRS_MAX_RETRIES 30, CQRS_RETRY_DELAY 2.
        assert SimplestReplica.should_retry_cqrs(29) is True
        assert SimplestReplica.should_retry_cqrs(30) is False
        assert SimplestReplica.get_cqrs_retry_delay(1) == 2


# --- DB / validation errors in the hooks --------------------------------------------------------


def test_not_null_violation_on_create_is_logged_and_fails(cqrs_logs):
    result = save('auto_fields', data(1, 0, name=None, flag=True))

    assert not result
    assert not AutoFieldsReplica.objects.exists()
    assert logged(cqrs_logs, 'ERROR')

    # the next message on the same connection still applies
    assert save('auto_fields', data(1, 0, name='ok', flag=True))
    assert AutoFieldsReplica.objects.get(id=1).name == 'ok'


def test_integrity_error_in_custom_create_is_logged(cqrs_logs, monkeypatch):
    def failing_create(cls, sync, mapped_data, previous_data=None, meta=None):
        raise IntegrityError('custom integrity failure')

    monkeypatch.setattr(SimplestReplica, 'cqrs_create', classmethod(failing_create))

    assert not save('simplest', data(1, 0, name='a'))

    assert any('custom integrity failure' in m for m in logged(cqrs_logs, 'ERROR'))
    assert not SimplestReplica.objects.exists()


def test_db_error_on_update_is_logged_and_row_kept(cqrs_logs):
    save('auto_fields', data(1, 0, name='ok', flag=True))

    result = save('auto_fields', data(1, 1, name=None, flag=True))

    assert not result
    row = AutoFieldsReplica.objects.get(id=1)
    assert (row.name, row.cqrs_revision) == ('ok', 0)
    assert logged(cqrs_logs, 'ERROR')

    assert save('auto_fields', data(1, 1, name='fixed', flag=True))
    assert AutoFieldsReplica.objects.get(id=1).name == 'fixed'


def test_validation_error_is_logged_and_fails(cqrs_logs):
    result = save('auto_fields', data(1, 0, name='a', flag=True, birth_date='not a date'))

    assert not result
    assert not AutoFieldsReplica.objects.exists()
    assert logged(cqrs_logs, 'ERROR')


def test_previous_data_reaches_hooks(recorded):
    previous = {'name': 'before'}

    assert save('tracked', data(1, 0, name='a'), previous_data=previous)
    assert save('tracked', data(1, 1, name='b'), previous_data={'name': 'a'})

    assert recorded == [
        {'cqrs_id': 'tracked', 'previous_data': previous, 'sync': False},
        {'cqrs_id': 'tracked', 'previous_data': {'name': 'a'}, 'sync': False},
    ]


def test_log_levels_are_on_cqrs_logger(cqrs_logs):
    make_simplest(rev=3)

    save('simplest', data(1, 1, name='old'))

    records = [r for r in cqrs_logs.records if r.levelno >= logging.ERROR]
    assert records
    assert {r.name for r in records} == {'django-cqrs'}
