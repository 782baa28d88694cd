"""Batched apply in the consumer (issue 10, item 1): the decision logic, in process.

Each scenario runs the same messages twice from the same starting rows: once one by one
through ``consume`` (the per-message path) and once through ``consume_batch``. Both must give
the same results, the same log lines and the same rows; the batch must also have used bulk
statements (few queries) where the model allows it.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from django.db import connection, transaction
from django.db.models import signals
from django.test.utils import CaptureQueriesContext

from dj_cqrs.constants import SignalType
from dj_cqrs.controller import consumer
from dj_cqrs.managers import ReplicaManager, batch_kind
from dj_cqrs.models import CQRSTombstone
from tests.dj_replica.models import (
    RECORDED,
    AutoFieldsReplica,
    CustomDeleteReplica,
    FlakyReplica,
    LockedReplica,
    MappedReplica,
    NoDBReplica,
    PlainFKReplica,
    SimplestReplica,
    TreeReplica,
    UUIDReplica,
)
from tests.harness import PAYLOAD_UPDATED as UPDATED
from tests.harness import instance_data, payload

LATER = '2024-05-02 10:00:00+00:00'  # a row the master created again after deleting it
MODELS = (
    SimplestReplica,
    AutoFieldsReplica,
    MappedReplica,
    UUIDReplica,
    LockedReplica,
    TreeReplica,
    PlainFKReplica,
)


def save(pk, rev, cqrs_id='simplest', signal_type=SignalType.SAVE, updated=UPDATED, **fields):
    """A SAVE (or ``signal_type``) of row ``pk`` named after its model, pk and revision."""
    fields = {'name': f'{cqrs_id} {pk} r{rev}', **fields}
    return payload(signal_type, cqrs_id, instance_data(pk, rev, updated, **fields))


def sync(pk, rev, cqrs_id='simplest', **fields):
    return save(pk, rev, cqrs_id, SignalType.SYNC, **fields)


def delete(pk, cqrs_id='simplest', rev=9):
    return payload(SignalType.DELETE, cqrs_id, instance_data(pk, rev))


def rows():
    """Every row of the models the scenarios touch, and the tombstones."""
    state = {
        model.__name__: sorted(
            tuple(sorted(row.items())) for row in model._default_manager.values()
        )
        for model in MODELS
    }
    state['tombstones'] = sorted(
        CQRSTombstone.objects.values_list('cqrs_id', 'instance_pk', 'cqrs_revision', 'cqrs_updated')
    )
    return state


def clear():
    for model in MODELS:
        model._default_manager.all().delete()
    CQRSTombstone.objects.all().delete()
    RECORDED.clear()


def cqrs_lines(caplog):
    lines = [r.getMessage() for r in caplog.records if r.name == 'django-cqrs']
    caplog.clear()
    return lines


def truthy(outcomes):
    return [(bool(result), type(exc).__name__ if exc else None) for result, exc in outcomes]


def run_both(caplog, payloads, initial=()):
    """Apply ``payloads`` one by one, then in a batch, from the rows ``initial`` creates."""
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    runs = {}
    for mode in ('one_by_one', 'batch'):
        clear()
        for make in initial:
            make()
        cqrs_lines(caplog)
        with CaptureQueriesContext(connection) as queries, transaction.atomic():
            if mode == 'batch':
                outcomes = consumer.consume_batch(payloads)
            else:
                outcomes = [consumer._consume_one(payload) for payload in payloads]
        lines = [line for line in cqrs_lines(caplog) if 'is applied one by one' not in line]
        runs[mode] = {
            'outcomes': truthy(outcomes),
            'lines': lines,
            'rows': rows(),
            'recorded': list(RECORDED),
            'queries': len(queries),
        }
    one, batch = runs['one_by_one'], runs['batch']
    assert batch['outcomes'] == one['outcomes']
    assert batch['rows'] == one['rows']
    assert batch['recorded'] == one['recorded']
    return one, batch


def make(model, pk, rev, **fields):
    def create():
        values = {'name': f'stored {pk}', **fields}
        if model is MappedReplica:
            values = {'remote_id': pk, 'title': values.pop('name')}
        else:
            values['id'] = pk
        model._default_manager.create(cqrs_revision=rev, cqrs_updated=UPDATED, **values)

    return create


# --- which models take the bulk path -----------------------------------------------------------


@pytest.mark.parametrize(
    ('model', 'kind'),
    [
        (SimplestReplica, 'isolated'),
        (MappedReplica, 'isolated'),
        (LockedReplica, 'isolated'),
        (PlainFKReplica, 'related'),
        (TreeReplica, None),  # cqrs_update overridden
        (CustomDeleteReplica, None),  # cqrs_delete overridden
        (FlakyReplica, None),  # cqrs_save overridden
        (NoDBReplica, None),  # CQRS_NO_DB_OPERATIONS
    ],
)
def test_item_01_batch_kind_follows_the_per_message_rules(model, kind):
    assert batch_kind(model) == kind


def test_item_01_batch_kind_none_with_a_signal_receiver_or_save_override(monkeypatch):
    def receiver(**kwargs):
        pass

    signals.post_save.connect(receiver, sender=SimplestReplica)
    try:
        assert batch_kind(SimplestReplica) is None
    finally:
        signals.post_save.disconnect(receiver, sender=SimplestReplica)
    assert batch_kind(SimplestReplica) == 'isolated'

    monkeypatch.setattr(SimplestReplica, 'save', lambda self, *a, **k: None)
    assert batch_kind(SimplestReplica) is None


def test_item_01_batch_kind_none_with_a_custom_cqrs_manager(monkeypatch):
    class CustomManager(ReplicaManager):
        def update_instance(self, *args, **kwargs):
            return super().update_instance(*args, **kwargs)

    manager = CustomManager()
    manager.model = SimplestReplica
    monkeypatch.setattr(SimplestReplica, 'cqrs', manager)
    assert batch_kind(SimplestReplica) is None


def test_item_01_segments_keep_related_and_per_message_models_in_turn():
    payloads = [
        save(1, 0, 'simplest'),
        save(1, 0, 'plain_fk'),
        save(2, 0, 'simplest'),
        save(1, 0, 'tree'),
        save(2, 0, 'plain_fk'),
        save(3, 0, 'simplest'),
        save(1, 0, 'unknown_id'),
    ]
    segments = consumer._segments(payloads)
    assert [[(i, m.__name__ if m else None) for i, m in s] for s in segments] == [
        [(0, 'SimplestReplica'), (1, 'PlainFKReplica'), (2, 'SimplestReplica')],
        [(3, None)],
        [(4, 'PlainFKReplica'), (5, 'SimplestReplica'), (6, None)],
    ]


# --- the same results as one by one -------------------------------------------------------------


@pytest.mark.django_db
def test_item_01_mixed_creates_updates_stale_and_deletes_of_the_same_pks(caplog):
    payloads = [
        save(1, 0),  # created
        save(1, 1),  # updated
        save(1, 0),  # Wrong CQRS sync order
        save(1, 1),  # Received duplicate CQRS data
        save(1, 4),  # Lost or filtered out 2 CQRS packages
        save(2, 3),  # updates the stored row 2 (revision 2)
        delete(2),  # deletes it
        save(2, 5),  # late: not newer than the DELETE (tombstone), dropped
        save(2, 0, updated=LATER),  # created again on the master: the stored values are gone
        delete(3),  # deletes the stored row 3
        delete(4),  # nothing to delete: handled
        sync(5, 1),  # SYNC older than the stored revision 6: applied with a warning
        save(6, 0),  # same revision 0 as stored: duplicate and creation race warning
        save(7, 0),
        delete(7),  # created and deleted in the batch: nothing written
        save(8, 2),
        save(8, 1),  # older than the one just created in the batch
        {'id': 9, 'name': 'no revision'},  # Sync fields are not provided: None
        delete(None),  # a DELETE without pk
    ]
    payloads[17] = payload(SignalType.SAVE, 'simplest', payloads[17])
    payloads[18].instance_data.pop('id')
    initial = [
        make(SimplestReplica, 2, 2),
        make(SimplestReplica, 3, 0),
        make(SimplestReplica, 5, 6),
        make(SimplestReplica, 6, 0),
    ]
    one, batch = run_both(caplog, payloads, initial)
    assert batch['lines'] == one['lines']
    assert [line.split(':')[0] for line in one['lines']] == [
        'Wrong CQRS sync order',
        'Received duplicate CQRS data',
        'Lost or filtered out 2 CQRS packages',
        'CQRS data of a deleted instance is dropped',
        'CQRS revision downgrade on sync',
        'Received duplicate CQRS data',
        'CQRS potential creation race condition',
        'Wrong CQRS sync order',
        'CQRS sync fields are not provided in data (simplest).',
        'CQRS PK is not provided in data (simplest).',
    ]
    assert sorted(SimplestReplica.objects.values_list('id', 'name', 'cqrs_revision')) == [
        (1, 'simplest 1 r4', 4),
        (2, 'simplest 2 r0', 0),
        (5, 'simplest 5 r1', 1),
        (6, 'stored 6', 0),
        (8, 'simplest 8 r2', 2),
    ]
    # The tombstones of 3, 4 and 7 are written; the one of 2 is gone with its re-creation.
    assert [t[1:3] for t in batch['rows']['tombstones']] == [('3', 9), ('4', 9), ('7', 9)]
    # One lookup, one DELETE (with its cascade lookup), one INSERT, one UPDATE, savepoint,
    # one lookup and one upsert of tombstones (and on PostgreSQL the per-pk locks).
    assert batch['queries'] <= 11 < one['queries']


@pytest.mark.django_db
@pytest.mark.parametrize('model', [AutoFieldsReplica, MappedReplica, UUIDReplica, LockedReplica])
def test_item_01_field_types_mapping_and_pk_types_as_one_by_one(caplog, model):
    cqrs_id = model.CQRS_ID
    extra = {}
    pks = [1, 2, 3]
    if model is AutoFieldsReplica:
        extra = {
            'created_at': '2024-05-01T10:00:00+00:00',
            'birth_date': '2000-02-29',
            'at_time': '12:30:00',
            'token': str(uuid.UUID(int=7)),
            'amount': '12.50',
            'ratio': 0.25,
            'flag': True,
        }
    if model is UUIDReplica:
        pks = [str(uuid.UUID(int=n)) for n in (1, 2, 3)]
    payloads = [
        save(pks[0], 0, cqrs_id, **extra),
        save(pks[0], 1, cqrs_id, **extra),
        save(pks[1], 0, cqrs_id, **extra),
        save(pks[1], 0, cqrs_id, **extra),
        delete(pks[1], cqrs_id),
        save(pks[2], 1, cqrs_id, **extra),
    ]
    if model is AutoFieldsReplica:
        payloads.append(save(4, 0, cqrs_id, name='no flag'))  # required field missing
    one, batch = run_both(caplog, payloads)
    assert batch['lines'] == one['lines']
    assert batch['queries'] < one['queries']


@pytest.mark.django_db
def test_item_01_poison_message_fails_alone_and_the_others_are_applied(caplog):
    payloads = [save(1, 0), save(2, 0), save('not a number', 0), save(3, 0), save(1, 1)]
    one, batch = run_both(caplog, payloads)
    assert batch['outcomes'] == [
        (True, None),
        (True, None),
        (False, 'ValueError'),
        (True, None),
        (True, None),
    ]
    assert batch['lines'] == one['lines']
    assert 'CQRS service exception' in one['lines']
    assert sorted(SimplestReplica.objects.values_list('id', 'cqrs_revision')) == [
        (1, 1),
        (2, 0),
        (3, 0),
    ]


@pytest.mark.django_db
def test_item_01_database_error_in_the_bulk_write_falls_back_to_one_by_one(caplog):
    # 'flag' is required and not nullable: None passes the mapping, fails at the INSERT.
    payloads = [
        save(1, 0, 'auto_fields', flag=True),
        save(2, 0, 'auto_fields', flag=None),
        save(3, 0, 'auto_fields', flag=False),
    ]
    one, batch = run_both(caplog, payloads)
    assert batch['outcomes'] == [(True, None), (False, None), (True, None)]
    assert batch['lines'] == one['lines']
    assert any('CQRS create error: pk = 2 (auto_fields)' in line for line in one['lines'])
    assert sorted(AutoFieldsReplica.objects.values_list('id', flat=True)) == [1, 3]


@pytest.mark.django_db
def test_item_01_custom_hook_model_in_the_same_batch_keeps_its_hook_calls(caplog):
    payloads = [
        save(1, 0, 'tree'),
        save(1, 0),
        save(1, 1, 'tree'),  # TreeReplica.cqrs_update records the call
        save(1, 1),
        save(1, 0),  # stale
        save(2, 0, 'tree', parent_id=1),
        save(1, 2, 'tree'),
    ]
    one, batch = run_both(caplog, payloads)
    assert sorted(batch['lines']) == sorted(one['lines'])
    assert [r['cqrs_id'] for r in batch['recorded']] == ['tree', 'tree']
    assert TreeReplica.objects.get(pk=1).cqrs_revision == 2
    assert SimplestReplica.objects.get(pk=1).cqrs_revision == 1


@pytest.mark.django_db
def test_item_01_related_model_and_direct_sync_rule_as_one_by_one(caplog, settings):
    payloads = [
        save(1, 0, 'plain_fk', target=5),
        save(1, 1, 'plain_fk', target=None),
        save(2, 0, 'plain_fk', target=6),
        delete(2, 'plain_fk'),
        sync(1, 0, 'direct_syncs'),  # not addressed to this queue: handled, not applied
        save(3, 0),
    ]
    one, batch = run_both(caplog, payloads)
    assert batch['lines'] == one['lines']
    assert list(PlainFKReplica.objects.values_list('id', 'target_id')) == [(1, None)]


@pytest.mark.django_db(transaction=True)
def test_item_01_select_for_update_model_locks_the_batch_rows_in_one_query(caplog):
    make(LockedReplica, 1, 0)()
    make(LockedReplica, 2, 0)()
    payloads = [save(1, 1, 'locked'), save(2, 1, 'locked'), save(3, 0, 'locked')]
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        outcomes = consumer.consume_batch(payloads)
    assert truthy(outcomes) == [(True, None)] * 3
    lookups = [
        q['sql']
        for q in queries
        if q['sql'].startswith('SELECT')
        and 'dj_cqrs_tombstone' not in q['sql']
        and 'pg_advisory_xact_lock' not in q['sql']
    ]
    assert len(lookups) == 1
    if connection.features.has_select_for_update:
        assert 'FOR UPDATE' in lookups[0]
        assert 'ORDER BY' in lookups[0]
    assert sorted(LockedReplica.objects.values_list('id', 'cqrs_revision')) == [
        (1, 1),
        (2, 1),
        (3, 0),
    ]


@pytest.mark.django_db
def test_item_01_updates_run_the_fields_pre_save_as_save_does(caplog, monkeypatch):
    # What an auto_now field does: pre_save() sets the value written (add=True on INSERT).
    field = SimplestReplica._meta.get_field('name')

    def pre_save(obj, add):
        obj.name = f'{obj.name.split(" +")[0]} +{"add" if add else "update"}'
        return obj.name

    monkeypatch.setattr(field, 'pre_save', pre_save)
    # (A row created and updated in one batch is written by one INSERT: add=True only.)
    payloads = [save(1, 1), save(2, 1), save(3, 0)]
    one, batch = run_both(caplog, payloads, [make(SimplestReplica, 2, 0)])
    assert sorted(SimplestReplica.objects.values_list('id', 'name')) == [
        (1, 'simplest 1 r1 +add'),
        (2, 'simplest 2 r1 +update'),
        (3, 'simplest 3 r0 +add'),
    ]
