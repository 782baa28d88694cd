"""Master bulk operations (SPEC §3): ``Model.cqrs.bulk_create`` / ``bulk_update`` and the
bulk signals sent by hand."""

from datetime import date

import pytest
from django.db import transaction
from django.db.models import F

from dj_cqrs.constants import SignalType
from tests.dj_master.models import (
    AutoFieldsModel,
    NoProduceModel,
    SimplestModel,
    SometimesSyncedModel,
    TrackedModel,
    TrackedParent,
)
from tests.dj_replica.models import (
    AutoFieldsReplica,
    SimplestReplica,
    SometimesReplica,
    TrackedReplica,
)
from tests.harness import signal_types

pytestmark = pytest.mark.django_db(transaction=True)


# --- bulk_create ----------------------------------------------------------------------------


def test_bulk_create_publishes_a_save_per_object(produced):
    created = SimplestModel.cqrs.bulk_create(
        [SimplestModel(id=1, name='a'), SimplestModel(id=2, name='b'), SimplestModel(id=3)]
    )

    assert len(created) == 3
    assert signal_types(produced) == [SignalType.SAVE] * 3
    assert [p.pk for p in produced] == [1, 2, 3]
    assert [p.instance_data['cqrs_revision'] for p in produced] == [0, 0, 0]
    assert dict(SimplestReplica.objects.values_list('id', 'name')) == {1: 'a', 2: 'b', 3: None}


def test_bulk_create_auto_pk(produced):
    created = AutoFieldsModel.cqrs.bulk_create(
        [AutoFieldsModel(name='x'), AutoFieldsModel(name='y')]
    )

    pks = [obj.pk for obj in created]
    assert None not in pks
    assert sorted(p.pk for p in produced) == sorted(pks)
    assert set(AutoFieldsReplica.objects.values_list('name', flat=True)) == {'x', 'y'}


def test_bulk_create_in_transaction_publishes_on_commit(produced):
    with transaction.atomic():
        SimplestModel.cqrs.bulk_create([SimplestModel(id=1), SimplestModel(id=2)])
        assert produced == []

    assert sorted(p.pk for p in produced) == [1, 2]
    assert SimplestReplica.objects.count() == 2


def test_bulk_create_rolled_back_publishes_nothing(produced):
    with pytest.raises(RuntimeError), transaction.atomic():
        SimplestModel.cqrs.bulk_create([SimplestModel(id=1), SimplestModel(id=2)])
        raise RuntimeError('boom')

    assert produced == []
    assert not SimplestReplica.objects.exists()


def test_bulk_create_tracked_fields(produced):
    TrackedModel.cqrs.bulk_create([TrackedModel(name='a', day=date(2020, 1, 1)), TrackedModel()])

    assert [p.previous_data for p in produced] == [{'name': None, 'day': None}, {}]
    assert TrackedReplica.objects.count() == 2


def test_bulk_create_respects_is_sync_instance_and_produce(produced):
    SometimesSyncedModel.cqrs.bulk_create(
        [SometimesSyncedModel(name='private'), SometimesSyncedModel(name='public')]
    )
    NoProduceModel.cqrs.bulk_create([NoProduceModel(name='n')])

    assert [p.instance_data['name'] for p in produced] == ['public']
    assert list(SometimesReplica.objects.values_list('name', flat=True)) == ['public']


# --- bulk_update ----------------------------------------------------------------------------


def test_bulk_update_updates_bumps_and_publishes(produced):
    for pk in (1, 2, 3):
        SimplestModel.objects.create(id=pk, name=f'n{pk}')
    before = dict(SimplestModel.objects.values_list('id', 'cqrs_updated'))
    produced.clear()

    updated = SimplestModel.cqrs.bulk_update(SimplestModel.objects.filter(id__in=[1, 2]), name='x')

    assert updated == 2
    rows = {obj.pk: obj for obj in SimplestModel.objects.all()}
    assert (rows[1].name, rows[1].cqrs_revision) == ('x', 1)
    assert (rows[2].name, rows[2].cqrs_revision) == ('x', 1)
    assert (rows[3].name, rows[3].cqrs_revision) == ('n3', 0)
    assert rows[1].cqrs_updated > before[1]
    assert rows[2].cqrs_updated > before[2]
    assert rows[3].cqrs_updated == before[3]

    assert sorted(p.pk for p in produced) == [1, 2]
    for payload in produced:
        assert payload.signal_type == SignalType.SAVE
        assert payload.instance_data['name'] == 'x'
        assert payload.instance_data['cqrs_revision'] == 1
        assert payload.instance_data['cqrs_updated'] == str(rows[payload.pk].cqrs_updated)
    replicas = {r.pk: r for r in SimplestReplica.objects.all()}
    assert (replicas[1].name, replicas[1].cqrs_revision) == ('x', 1)
    assert (replicas[2].name, replicas[2].cqrs_revision) == ('x', 1)
    assert (replicas[3].name, replicas[3].cqrs_revision) == ('n3', 0)


def test_bulk_update_with_f_expression(produced):
    obj = TrackedModel.objects.create(name='a', other=3)
    produced.clear()

    TrackedModel.cqrs.bulk_update(TrackedModel.objects.filter(pk=obj.pk), other=F('other') + 2)

    assert produced[0].instance_data['other'] == 5
    assert TrackedReplica.objects.get(pk=obj.pk).other == 5


def test_bulk_update_tracked_previous_values(produced, recorded):
    parent_1 = TrackedParent.objects.create(name='p1')
    parent_2 = TrackedParent.objects.create(name='p2')
    first = TrackedModel.objects.create(name='a', parent=parent_1, day=date(2020, 1, 2))
    second = TrackedModel.objects.create(name='b', parent=parent_1)
    produced.clear()
    recorded.clear()

    TrackedModel.cqrs.bulk_update(
        TrackedModel.objects.filter(pk__in=[first.pk, second.pk]),
        name='b',
        parent=parent_2,
        day=date(2021, 1, 1),
    )

    # item 5: the old value of every tracked field, changed or not; foreign keys by attname
    by_pk = {p.pk: p for p in produced}
    assert by_pk[first.pk].previous_data == {
        'name': 'a',
        'parent_id': parent_1.pk,
        'day': '2020-01-02',
    }
    assert by_pk[second.pk].previous_data == {'name': 'b', 'parent_id': parent_1.pk, 'day': None}
    assert by_pk[first.pk].instance_data['parent'] == parent_2.pk
    assert by_pk[first.pk].instance_data['day'] == '2021-01-01'
    assert sorted(r['previous_data']['parent_id'] for r in recorded) == [parent_1.pk] * 2
    assert set(TrackedReplica.objects.values_list('name', flat=True)) == {'b'}


def test_bulk_update_empty_queryset(produced):
    assert SimplestModel.cqrs.bulk_update(SimplestModel.objects.none(), name='x') == 0
    assert produced == []


def test_bulk_update_in_transaction_publishes_on_commit(produced):
    SimplestModel.objects.create(id=1)
    produced.clear()

    with transaction.atomic():
        SimplestModel.cqrs.bulk_update(SimplestModel.objects.all(), name='x')
        assert produced == []

    assert [p.instance_data['name'] for p in produced] == ['x']


def test_bulk_update_rolled_back_publishes_nothing(produced):
    SimplestModel.objects.create(id=1, name='a')
    produced.clear()

    with pytest.raises(RuntimeError), transaction.atomic():
        SimplestModel.cqrs.bulk_update(SimplestModel.objects.all(), name='x')
        raise RuntimeError('boom')

    assert produced == []
    assert SimplestModel.objects.get(pk=1).cqrs_revision == 0
    assert SimplestReplica.objects.get(pk=1).name == 'a'


# --- bulk signals by hand -------------------------------------------------------------------


def test_call_post_bulk_create_by_hand(produced):
    objs = SimplestModel.objects.bulk_create([SimplestModel(id=1, name='a'), SimplestModel(id=2)])
    assert produced == []

    SimplestModel.call_post_bulk_create(objs)

    assert sorted(p.pk for p in produced) == [1, 2]
    assert signal_types(produced) == [SignalType.SAVE, SignalType.SAVE]
    assert SimplestReplica.objects.get(pk=1).name == 'a'
    assert SimplestReplica.objects.count() == 2


def test_call_post_update_by_hand(produced):
    SimplestModel.objects.create(id=1, name='a')
    SimplestModel.objects.create(id=2, name='b')
    produced.clear()

    queryset = SimplestModel.objects.filter(id__in=[1, 2])
    queryset.update(name='y', cqrs_revision=F('cqrs_revision') + 1)
    assert produced == []

    SimplestModel.call_post_update(list(queryset), using='default')

    assert sorted(p.pk for p in produced) == [1, 2]
    assert {p.instance_data['name'] for p in produced} == {'y'}
    assert {p.instance_data['cqrs_revision'] for p in produced} == {1}
    replicas = SimplestReplica.objects.order_by('pk')
    assert [(r.name, r.cqrs_revision) for r in replicas] == [('y', 1), ('y', 1)]
