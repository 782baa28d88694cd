"""Master serialization (SPEC §3): default dict, CQRS_FIELDS, CQRS_SERIALIZER, F-expressions,
bulk_relate_cqrs_serialization and tracked fields."""

import uuid
from datetime import date, datetime, time, timezone
from decimal import Decimal

import pytest
import ujson
from django.db import connection, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from dj_cqrs.utils import bulk_relate_cqrs_serialization
from tests.dj_master.models import (
    Author,
    AutoFieldsModel,
    FilteredModel,
    Publisher,
    SimplestModel,
    TrackedModel,
    TrackedParent,
)
from tests.dj_replica.models import (
    AuthorReplica,
    AutoFieldsReplica,
    MappedReplica,
    PublisherReplica,
    TrackedParentReplica,
    TrackedReplica,
)

pytestmark = pytest.mark.django_db(transaction=True)


def author_selects(captured_queries):
    return [
        q['sql']
        for q in captured_queries
        if q['sql'].startswith('SELECT') and 'FROM "dj_master_author"' in q['sql']
    ]


# --- default serialization ------------------------------------------------------------------


def test_auto_fields_serialization(produced):
    created_at = datetime(2021, 2, 3, 4, 5, 6, 789, tzinfo=timezone.utc)
    token = uuid.UUID('12345678-1234-5678-1234-567812345678')
    obj = AutoFieldsModel.objects.create(
        name='all types',
        created_at=created_at,
        birth_date=date(2000, 1, 31),
        at_time=time(10, 11, 12),
        token=token,
        amount=Decimal('12.34'),
        ratio=0.5,
        flag=True,
    )

    data = produced[0].instance_data
    assert data['id'] == obj.pk
    assert produced[0].pk == obj.pk
    assert data['name'] == 'all types'
    assert data['created_at'] == str(created_at)
    assert data['birth_date'] == '2000-01-31'
    assert data['at_time'] == '10:11:12'
    assert data['token'] == str(token)
    assert data['amount'] == Decimal('12.34')  # a JSON number on the wire (item 10)
    assert '"amount":12.34,' in ujson.dumps(produced[0].to_dict())
    assert data['ratio'] == 0.5
    assert data['flag'] is True
    assert data['cqrs_revision'] == 0
    assert data['cqrs_updated'] == str(AutoFieldsModel.objects.get(pk=obj.pk).cqrs_updated)
    assert set(data) == {
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
    }

    replica = AutoFieldsReplica.objects.get(pk=obj.pk)
    assert replica.name == 'all types'
    assert replica.created_at == created_at
    assert replica.birth_date == date(2000, 1, 31)
    assert replica.at_time == time(10, 11, 12)
    assert replica.token == token
    assert replica.amount == Decimal('12.34')
    assert replica.ratio == 0.5
    assert replica.flag is True


def test_auto_fields_none_values_stay_none(produced):
    obj = AutoFieldsModel.objects.create()

    data = produced[0].instance_data
    for name in ('created_at', 'birth_date', 'at_time', 'token', 'amount', 'ratio'):
        assert data[name] is None, name
    assert AutoFieldsReplica.objects.get(pk=obj.pk).token is None


def test_to_cqrs_dict_direct():
    obj = SimplestModel.objects.create(id=4, name='d')
    data = obj.to_cqrs_dict()
    assert data == {
        'id': 4,
        'name': 'd',
        'cqrs_revision': 0,
        'cqrs_updated': str(obj.cqrs_updated),
    }


# --- CQRS_FIELDS ----------------------------------------------------------------------------


def test_cqrs_fields_limit_the_data(produced):
    obj = FilteredModel.objects.create(name='visible', secret='s3cr3t')

    data = produced[0].instance_data
    assert set(data) == {'id', 'name', 'cqrs_revision', 'cqrs_updated'}
    assert data['name'] == 'visible'
    assert 's3cr3t' not in str(produced[0].to_dict())

    replica = MappedReplica.objects.get(remote_id=obj.pk)
    assert replica.title == 'visible'
    assert replica.cqrs_revision == 0

    obj.name = 'renamed'
    obj.save()
    replica = MappedReplica.objects.get(remote_id=obj.pk)
    assert (replica.title, replica.cqrs_revision) == ('renamed', 1)


# --- CQRS_SERIALIZER ------------------------------------------------------------------------


def test_serializer_with_related_model(produced):
    publisher = Publisher.objects.create(name='pub')
    author = Author.objects.create(name='writer', publisher=publisher)

    data = produced[0].instance_data
    assert data == {
        'id': author.pk,
        'name': 'writer',
        'publisher': {'id': publisher.pk, 'name': 'pub'},
        'cqrs_revision': 0,
        'cqrs_updated': str(Author.objects.get(pk=author.pk).cqrs_updated),
    }
    replica = AuthorReplica.objects.get(pk=author.pk)
    assert replica.name == 'writer'
    assert replica.publisher_id == publisher.pk
    assert PublisherReplica.objects.get(pk=publisher.pk).name == 'pub'

    author.name = 'writer 2'
    author.save()
    assert produced[1].instance_data['cqrs_revision'] == 1
    replica = AuthorReplica.objects.get(pk=author.pk)
    assert (replica.name, replica.cqrs_revision) == ('writer 2', 1)


def test_serializer_without_related_object(produced):
    author = Author.objects.create(name='alone')
    assert produced[0].instance_data['publisher'] is None
    assert AuthorReplica.objects.get(pk=author.pk).publisher is None


def test_serializer_reads_the_database_state(produced):
    publisher = Publisher.objects.create(name='pub')
    author = Author.objects.create(name='writer', publisher=publisher)
    produced.clear()

    # A change of the related object made in the same transaction is seen on commit.
    with transaction.atomic():
        author.name = 'writer 2'
        author.save()
        Publisher.objects.filter(pk=publisher.pk).update(name='pub 2')

    assert produced[0].instance_data['publisher'] == {'id': publisher.pk, 'name': 'pub 2'}
    assert produced[0].instance_data['cqrs_revision'] == 1
    assert PublisherReplica.objects.get(pk=publisher.pk).name == 'pub 2'


def test_relate_cqrs_serialization_is_used(produced, monkeypatch):
    calls = []
    original = Author.__dict__['relate_cqrs_serialization'].__func__

    def spy(cls, queryset):
        calls.append(queryset.model)
        return original(cls, queryset)

    monkeypatch.setattr(Author, 'relate_cqrs_serialization', classmethod(spy))
    publisher = Publisher.objects.create(name='pub')

    with CaptureQueriesContext(connection) as ctx:
        Author.objects.create(name='writer', publisher=publisher)

    assert calls == [Author]
    selects = author_selects(ctx.captured_queries)
    assert len(selects) == 1
    # select_related('publisher'): the publisher comes in the same query.
    assert 'JOIN "dj_master_publisher"' in selects[0]
    assert not [
        q
        for q in ctx.captured_queries
        if q['sql'].startswith('SELECT') and 'FROM "dj_master_publisher"' in q['sql']
    ]
    assert produced[0].instance_data['publisher'] == {'id': publisher.pk, 'name': 'pub'}


def _save_authors(publisher, count):
    with transaction.atomic():
        for i in range(count):
            Author.objects.create(name=f'author {i}', publisher=publisher)


@bulk_relate_cqrs_serialization()
def _save_authors_decorated(publisher, count):
    _save_authors(publisher, count)


def test_bulk_relate_cqrs_serialization_batches_queries(produced):
    count = 5
    publisher = Publisher.objects.create(name='pub')

    with CaptureQueriesContext(connection) as plain:
        _save_authors(publisher, count)
    with CaptureQueriesContext(connection) as batched, bulk_relate_cqrs_serialization():
        _save_authors(publisher, count)

    assert len(author_selects(plain.captured_queries)) == count
    assert len(author_selects(batched.captured_queries)) == 1
    assert len(batched.captured_queries) < len(plain.captured_queries)

    assert len(produced) == 2 * count
    for payload in produced[count:]:
        assert payload.instance_data['publisher'] == {'id': publisher.pk, 'name': 'pub'}
        assert payload.instance_data['name'] == Author.objects.get(pk=payload.pk).name
    assert AuthorReplica.objects.count() == 2 * count
    assert set(AuthorReplica.objects.values_list('name', flat=True)) == {
        f'author {i}' for i in range(count)
    }


def test_bulk_relate_cqrs_serialization_as_decorator(produced):
    count = 4
    publisher = Publisher.objects.create(name='pub')

    with CaptureQueriesContext(connection) as ctx:
        _save_authors_decorated(publisher, count)

    assert len(author_selects(ctx.captured_queries)) == 1
    assert len(produced) == count
    assert sorted(p.instance_data['name'] for p in produced) == [
        f'author {i}' for i in range(count)
    ]
    assert AuthorReplica.objects.count() == count


def test_bulk_relate_cqrs_serialization_other_cqrs_id_does_not_batch(produced):
    publisher = Publisher.objects.create(name='pub')

    with CaptureQueriesContext(connection) as ctx, bulk_relate_cqrs_serialization('simplest'):
        _save_authors(publisher, 3)

    assert len(author_selects(ctx.captured_queries)) == 3
    assert len(produced) == 3


def test_bulk_relate_cqrs_serialization_sees_latest_data(produced):
    publisher = Publisher.objects.create(name='pub')
    author = Author.objects.create(name='a', publisher=publisher)
    produced.clear()

    with bulk_relate_cqrs_serialization():
        with transaction.atomic():
            author.name = 'b'
            author.save()
        with transaction.atomic():
            author.name = 'c'
            author.save()

    assert [p.instance_data['name'] for p in produced] == ['b', 'c']
    assert [p.instance_data['cqrs_revision'] for p in produced] == [1, 2]
    assert AuthorReplica.objects.get(pk=author.pk).name == 'c'


# --- F-expressions --------------------------------------------------------------------------


def test_f_expression_is_refreshed_before_publishing(produced):
    obj = TrackedModel.objects.create(name='f', other=5)
    obj.other = F('other') + 1
    obj.save()

    assert produced[-1].instance_data['other'] == 6
    assert produced[-1].instance_data['cqrs_revision'] == 1
    assert TrackedReplica.objects.get(pk=obj.pk).other == 6


def test_f_expression_is_refreshed_in_transaction(produced):
    obj = TrackedModel.objects.create(name='f', other=1)
    produced.clear()

    with transaction.atomic():
        obj.other = F('other') + 10
        obj.save()

    assert produced[0].instance_data['other'] == 11
    assert produced[0].instance_data['cqrs_revision'] == 1
    assert TrackedReplica.objects.get(pk=obj.pk).other == 11


# --- tracked fields -------------------------------------------------------------------------


def test_tracked_fields_on_create(produced, recorded):
    TrackedModel.objects.create(name='new', day=date(2020, 1, 2))

    assert produced[0].previous_data == {'name': None, 'day': None}
    assert recorded == [
        {'cqrs_id': 'tracked', 'previous_data': {'name': None, 'day': None}, 'sync': False}
    ]


def test_tracked_fields_on_create_with_parent(produced):
    parent = TrackedParent.objects.create(name='p')
    TrackedModel.objects.create(parent=parent)

    assert produced[-1].previous_data == {'parent_id': None}  # attname on create (item 3)


def test_tracked_fields_on_update_report_previous_values_of_changed_fields(produced, recorded):
    parent_1 = TrackedParent.objects.create(name='p1')
    parent_2 = TrackedParent.objects.create(name='p2')
    obj = TrackedModel.objects.create(name='a', parent=parent_1, day=date(2020, 1, 2))

    obj.name = 'b'
    obj.parent = parent_2
    obj.save()
    assert produced[-1].previous_data == {'name': 'a', 'parent': parent_1.pk}
    assert produced[-1].instance_data['parent'] == parent_2.pk
    assert recorded[-1]['previous_data'] == {'name': 'a', 'parent': parent_1.pk}

    obj.day = date(2021, 3, 4)
    obj.save()
    assert produced[-1].previous_data == {'day': '2020-01-02'}

    obj.other = 42
    obj.save()
    assert produced[-1].previous_data == {}

    obj.day = None
    obj.save()
    assert produced[-1].previous_data == {'day': '2021-03-04'}
    assert TrackedReplica.objects.get(pk=obj.pk).day is None


def test_tracked_fields_several_saves_in_one_transaction(produced):
    obj = TrackedModel.objects.create(name='a', day=date(2020, 1, 2))
    produced.clear()

    with transaction.atomic():
        obj.name = 'b'
        obj.save()
        obj.name = 'c'
        obj.save()
        obj.day = date(2022, 2, 2)
        obj.save()

    assert len(produced) == 1
    assert produced[0].previous_data == {'name': 'a', 'day': '2020-01-02'}
    assert produced[0].instance_data['name'] == 'c'
    assert produced[0].instance_data['day'] == '2022-02-02'


def test_tracked_fields_are_reset_after_publishing(produced):
    obj = TrackedModel.objects.create(name='a')
    obj.name = 'b'
    obj.save()
    with transaction.atomic():
        obj.save()
    assert produced[-1].previous_data == {}


def test_tracked_fields_after_rollback(produced):
    obj = TrackedModel.objects.create(name='a')
    produced.clear()

    with pytest.raises(RuntimeError), transaction.atomic():
        obj.name = 'b'
        obj.save()
        raise RuntimeError('boom')

    obj.name = 'a'
    obj.day = date(2020, 5, 5)
    obj.save()

    assert len(produced) == 1
    assert produced[0].previous_data['day'] is None


def test_tracked_fields_all(produced):
    parent = TrackedParent.objects.create(name='p')
    created = produced[-1].previous_data
    assert created['name'] is None
    assert TrackedParentReplica.objects.get(pk=parent.pk).name == 'p'

    parent.name = 'q'
    parent.save()
    previous = produced[-1].previous_data
    assert previous['name'] == 'p'
    assert 'id' not in previous
    assert TrackedParentReplica.objects.get(pk=parent.pk).name == 'q'


def test_untracked_model_has_no_previous_data(produced):
    obj = SimplestModel.objects.create(id=1, name='a')
    obj.name = 'b'
    obj.save()
    assert [p.previous_data for p in produced] == [None, None]


def test_tracked_fields_in_sync(produced, recorded):
    obj = TrackedModel.objects.create(name='a')
    produced.clear()
    recorded.clear()

    assert obj.cqrs_sync() is True
    assert produced[0].signal_type == 'SYNC'
    assert recorded[-1]['sync'] is True
