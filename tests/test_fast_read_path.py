"""Issue 10 item 2: ``cqrs_bulk_dump`` and ``cqrs_sync`` read rows with ``values_list()`` and
build their data without model instances when the model's serialization allows it; the dump
lines and the SYNC bodies are byte for byte those of the instance path."""

from __future__ import annotations

import io
import uuid
from datetime import date, datetime, time, timezone
from decimal import Decimal

import pytest
import ujson
from django.core.management import call_command
from django.db.models.signals import post_init
from django.test import override_settings

from dj_cqrs.constants import SignalType
from dj_cqrs.controller import producer
from dj_cqrs.management.commands import cqrs_sync
from dj_cqrs.mixins import RawMasterMixin
from dj_cqrs.transport.loopback import LoopbackTransport
from tests.dj_master.models import (
    AllTypesModel,
    Author,
    AutoFieldsModel,
    FilteredModel,
    FlakyModel,
    MetaModel,
    NoProduceModel,
    Publisher,
    SimplestModel,
    SometimesSyncedModel,
    TrackedModel,
    TrackedParent,
    TreeModel,
    UUIDPkModel,
)

pytestmark = pytest.mark.django_db(transaction=True)

EXPIRES = datetime(2031, 2, 3, 4, 5, 6, tzinfo=timezone.utc)

# Every model whose rows are read without instances, with the rows the tests create.
FAST_MODELS = [
    SimplestModel,
    AutoFieldsModel,
    FilteredModel,
    UUIDPkModel,
    TrackedParent,
    TrackedModel,
    FlakyModel,
    NoProduceModel,
    AllTypesModel,
]


def make_rows() -> None:
    SimplestModel.objects.create(id=1, name='plain')
    SimplestModel.objects.create(id=2, name=None)
    SimplestModel.objects.create(id=3, name='ünïcödé "quoted" / slash \u2028')
    AutoFieldsModel.objects.create(
        name='full',
        created_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc),
        birth_date=date(1999, 12, 31),
        at_time=time(23, 59, 58, 5),
        token=uuid.UUID('12345678-1234-5678-1234-567812345678'),
        amount=Decimal('12345678.90'),
        ratio=0.1,
        flag=True,
    )
    AutoFieldsModel.objects.create()
    FilteredModel.objects.create(name='shown', secret='never sent')
    parent_uuid = UUIDPkModel.objects.create(name='uuid parent')
    UUIDPkModel.objects.create(id=uuid.UUID(int=1), name='')
    parent = TrackedParent.objects.create(name='parent')
    TrackedModel.objects.create(name='child', parent=parent, day=date(2020, 2, 29), other=7)
    TrackedModel.objects.create()
    FlakyModel.objects.create(id=5, name='flaky', fail_times=2, always_fail=False)
    NoProduceModel.objects.create(name='not published')
    AllTypesModel.objects.create()
    AllTypesModel.objects.create(
        big=-(2**62),
        small=-32768,
        positive=2**31 - 1,
        positive_small=0,
        text='line one\nline two\ttab',
        slug='a-slug',
        email='x@example.com',
        url='https://example.com/a?b=c&d=e',
        ip='2001:db8::1',
        data={'nested': [1, 2.5, None, True, {'k': 'v'}], 'empty': {}},
        created_at=datetime(2001, 1, 1, tzinfo=timezone.utc),
        day=date(1, 1, 1),
        at_time=time(0, 0),
        token=uuid.uuid4(),
        amount=Decimal('-0.0001'),
        ratio=1e-300,
        flag=False,
        parent=parent,
        uuid_parent=parent_uuid,
    )
    AllTypesModel.objects.create(data=[], flag=True, amount=Decimal('0'), text='')
    AllTypesModel.objects.create(data='a JSON string', ratio=-0.0)


@pytest.fixture
def instance_path(monkeypatch):
    """Call it to make every model take the instance path (as before issue 10)."""

    def force() -> None:
        monkeypatch.setattr(RawMasterMixin, '_cqrs_row_serialization', classmethod(_none))

    return force


def _none(cls):
    return None


@pytest.fixture
def no_instances():
    """Fail the test if a model instance is built meanwhile."""
    built = []

    def count(sender, **kwargs):
        built.append(sender)

    post_init.connect(count)
    yield built
    post_init.disconnect(count)


@pytest.fixture
def published_bodies(monkeypatch):
    """The bodies the RabbitMQ transport would publish, with a fixed expiry date."""
    bodies = []

    def produce(payload):
        bodies.append(ujson.dumps(payload.to_dict()))

    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(produce))
    monkeypatch.setattr(cqrs_sync, 'get_message_expiration_dt', lambda: EXPIRES)
    monkeypatch.setattr(producer, 'get_message_expiration_dt', lambda: EXPIRES)
    return bodies


def dump(model, tmp_path, name: str, batch: str = '2') -> str:
    path = tmp_path / name
    err = io.StringIO()
    call_command('cqrs_bulk_dump', '-c', model.CQRS_ID, '-o', str(path), '-b', batch, stderr=err)
    assert 'Done!' in err.getvalue()
    return path.read_text(encoding='utf-8')


def run_cqrs_sync(model, *args: str) -> str:
    """Run ``cqrs_sync`` of every row of ``model`` (batches of 2); its output."""
    out = io.StringIO()
    call_command('cqrs_sync', '--cqrs-id', model.CQRS_ID, '-f', '{}', '-b', '2', *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize('model', FAST_MODELS, ids=lambda model: model.CQRS_ID)
def test_item_10_2_dump_lines_are_those_of_the_instance_path(
    model, tmp_path, instance_path, no_instances
):
    make_rows()
    assert model._cqrs_row_serialization() is not None
    no_instances.clear()
    fast = dump(model, tmp_path, 'fast.dump')
    assert no_instances == [], 'the rows were read as instances'
    assert fast.count('\n') == model.objects.count()

    instance_path()
    assert dump(model, tmp_path, 'instances.dump') == fast
    assert no_instances, 'the instance path was not taken'


@pytest.mark.parametrize('model', FAST_MODELS, ids=lambda model: model.CQRS_ID)
@pytest.mark.parametrize('queue', [[], ['--queue', 'replica']], ids=['broadcast', 'queue'])
def test_item_10_2_sync_bodies_are_those_of_the_instance_path(
    model, queue, published_bodies, instance_path, no_instances
):
    make_rows()
    published_bodies.clear()
    no_instances.clear()
    fast_out = run_cqrs_sync(model, *queue)
    assert no_instances == [], 'the rows were read as instances'
    fast = list(published_bodies)
    published = model.objects.count() if model.CQRS_PRODUCE else 0
    assert len(fast) == published
    assert all(f'"signal_type":"{SignalType.SYNC}"' in body for body in fast)

    published_bodies.clear()
    instance_path()
    assert run_cqrs_sync(model, *queue) == fast_out
    assert published_bodies == fast


def test_item_10_2_a_value_the_json_encoder_refuses_fails_alone_as_on_the_instance_path(
    tmp_path, instance_path, monkeypatch
):
    """A value ``ujson`` cannot encode: the same ``Dump record failed`` line, the other rows
    dumped."""
    SimplestModel.objects.create(id=1, name='ok')
    SimplestModel.objects.create(id=2, name='bad')
    SimplestModel.objects.create(id=3, name='ok too')
    real = ujson.dumps

    def dumps(value, *args, **kwargs):
        if isinstance(value, dict) and value.get('name') == 'bad':
            raise OverflowError('cannot encode')
        return real(value, *args, **kwargs)

    module = 'dj_cqrs.management.commands.cqrs_bulk_dump.ujson.dumps'
    monkeypatch.setattr(module, dumps)
    outputs = []
    for _ in range(2):
        err = io.StringIO()
        path = tmp_path / f'{len(outputs)}.dump'
        call_command('cqrs_bulk_dump', '-c', 'simplest', '-o', str(path), stderr=err)
        outputs.append((path.read_text(), err.getvalue()))
        instance_path()
    assert outputs[0] == outputs[1]
    assert 'Dump record failed for pk=2: OverflowError: cannot encode' in outputs[0][1]
    assert outputs[0][0].count('\n') == 2


def test_item_10_2_sync_batches_are_handed_to_the_transport_at_once(monkeypatch, published_bodies):
    """One ``produce_many`` per batch of rows."""
    for pk in range(1, 6):
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
    batches = []
    real = LoopbackTransport.produce_many.__func__

    def produce_many(cls, payloads):
        batches.append([payload.pk for payload in payloads])
        return real(cls, payloads)

    monkeypatch.setattr(LoopbackTransport, 'produce_many', classmethod(produce_many))
    published_bodies.clear()
    out = run_cqrs_sync(SimplestModel)
    assert batches == [[1, 2], [3, 4], [5]]
    assert len(published_bodies) == 5
    assert out.endswith('Done!\n5 instance(s) synced.\n5 instance(s) processed.\n')


def test_item_10_2_a_payload_the_transport_refuses_is_reported_as_its_row(monkeypatch):
    """``produce_many`` raising: the batch is sent one by one, the failing row reported."""
    for pk in range(1, 4):
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
    published_pks = []

    def produce_many(cls, payloads):
        raise TypeError('cannot encode')

    def produce(payload):
        if payload.pk == 2:
            raise TypeError('cannot encode')
        published_pks.append(payload.pk)

    monkeypatch.setattr(LoopbackTransport, 'produce_many', classmethod(produce_many))
    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(produce))
    out = io.StringIO()
    call_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{}', stdout=out)
    assert published_pks == [1, 3]
    assert 'Sync record failed for pk=2: TypeError: cannot encode' in out.getvalue()
    assert out.getvalue().endswith('Done!\n2 instance(s) synced.\n3 instance(s) processed.\n')


@pytest.mark.parametrize(
    'model',
    [Author, SometimesSyncedModel, MetaModel, TreeModel],
    ids=lambda model: model.CQRS_ID,
)
def test_item_10_2_models_that_need_instances_keep_the_instance_path(model):
    """A serializer, ``is_sync_instance`` / ``get_cqrs_meta`` overrides, an ``__init__``
    override (django-mptt): no row path for the sync (nor for the dump when serialization
    itself needs the instance)."""
    assert cqrs_sync._row_payloads(model, None) is None
    if model in (Author, TreeModel):
        assert model._cqrs_row_serialization() is None


def test_item_10_2_meta_function_keeps_the_instance_path(settings):
    assert cqrs_sync._row_payloads(SimplestModel, None) is not None
    cqrs = {**settings.CQRS, 'master': {**settings.CQRS.get('master', {})}}
    cqrs['master']['meta_function'] = 'tests.test_fast_read_path.meta'
    with override_settings(CQRS=cqrs):
        assert cqrs_sync._row_payloads(SimplestModel, None) is None


def meta(obj, **kwargs):
    return {'pk': obj.pk}


def test_item_10_2_overridden_cqrs_sync_is_called_per_row(monkeypatch, published_bodies):
    calls = []

    def cqrs_sync_override(self, using=None, queue=None):
        calls.append((self.pk, queue))
        return True

    monkeypatch.setattr(SimplestModel, 'cqrs_sync', cqrs_sync_override)
    SimplestModel.objects.bulk_create([SimplestModel(id=pk, name='x') for pk in (1, 2)])
    published_bodies.clear()
    run_cqrs_sync(SimplestModel, '--queue', 'replica')
    assert calls == [(1, 'replica'), (2, 'replica')]
    assert published_bodies == []


def test_item_10_2_serializer_model_is_serialized_from_instances(tmp_path, no_instances):
    publisher = Publisher.objects.create(name='pub')
    Author.objects.create(name='author', publisher=publisher)
    no_instances.clear()
    text = dump(Author, tmp_path, 'author.dump')
    assert Author in no_instances
    assert text.count('\n') == 1


def test_item_10_2_expiry_is_that_of_the_instance_path(published_bodies):
    """The fast path takes the TTL as the instance path does (per message)."""
    SimplestModel.objects.create(id=1, name='x')
    published_bodies.clear()
    run_cqrs_sync(SimplestModel)
    assert f'"expires":"{EXPIRES.replace(microsecond=0).isoformat()}"' in published_bodies[0]
