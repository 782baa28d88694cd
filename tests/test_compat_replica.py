"""Issue 9, replica side: the same behaviour as django-cqrs (items 12-17, 28-30).

The replica models of ``tests.dj_replica`` used here are written as against django-cqrs: hooks
with ``**kwargs``, ``super()`` calls, table-less abstract handlers.
"""

import queue
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from dj_cqrs import constants
from dj_cqrs.constants import SignalType
from dj_cqrs.controller.consumer import consume, route_signal_to_replica_model
from dj_cqrs.delay import DelayMessage, DelayQueue
from dj_cqrs.logger import LastQueryCapturer, install_last_query_capturer
from dj_cqrs.registries import ReplicaRegistry
from dj_cqrs.transport._consuming import Delivery, parse_body
from dj_cqrs.transport._lifecycle import replica_bindings
from dj_cqrs.transport.loopback import LoopbackTransport
from dj_cqrs.transport.mixins import LoggingMixin
from dj_cqrs.transport.mock import TransportMock
from dj_cqrs.utils import apply_query_timeouts
from tests.dj_master.models import SimplestModel
from tests.dj_replica.models import (
    AbstractHandlerReplica,
    DBErrorReplica,
    HookKwargsMetaReplica,
    HookKwargsReplica,
    NoDBWithoutHooksReplica,
    PlainFKReplica,
    SimplestReplica,
)
from tests.harness import PAYLOAD_UPDATED as UPDATED
from tests.harness import instance_data as data
from tests.harness import logged, override_cqrs, payload, recording_worker


def route(signal_type, cqrs_id, instance_data, **kwargs):
    return route_signal_to_replica_model(signal_type, cqrs_id, instance_data, **kwargs)


def hooks(recorded, name):
    return [call for call in recorded if call.get('hook') == name]


@pytest.fixture(autouse=True)
def _forget_db_error_attempts():
    DBErrorReplica.ATTEMPTS.clear()
    yield
    DBErrorReplica.ATTEMPTS.clear()


# --- item 12: abstract handlers ---------------------------------------------------------------


def test_item_12_abstract_replica_with_cqrs_id_is_registered():
    assert AbstractHandlerReplica._meta.abstract
    assert ReplicaRegistry.get_model_by_cqrs_id('abstract_handler') is AbstractHandlerReplica
    bindings = replica_bindings()
    assert (settings.CQRS['queue'], 'abstract_handler') in bindings


def test_item_12_abstract_base_without_cqrs_id_is_only_a_base():
    from django.db import models

    from dj_cqrs.mixins import ReplicaMixin

    before = dict(ReplicaRegistry.models)

    class CommonFields(ReplicaMixin):
        name = models.CharField(max_length=10)

        class Meta:
            abstract = True
            app_label = 'dj_replica'

    assert ReplicaRegistry.models == before
    assert None not in ReplicaRegistry.models


def test_item_12_abstract_handler_receives_every_signal(recorded):
    assert route(SignalType.SAVE, 'abstract_handler', data(1), previous_data={'name': 'a'})
    assert route(SignalType.SYNC, 'abstract_handler', data(1))
    assert route(SignalType.DELETE, 'abstract_handler', data(1))

    assert [(c['hook'], c['kwargs']) for c in recorded] == [
        ('cqrs_save', {'previous_data': {'name': 'a'}}),
        ('cqrs_save', {'previous_data': None, 'sync': True}),
        ('cqrs_delete', {}),
    ]


# --- item 13: CQRS_NO_DB_OPERATIONS without hooks ----------------------------------------------


@pytest.mark.django_db
def test_item_13_no_db_operations_without_hooks_raises_not_implemented():
    with pytest.raises(NotImplementedError):
        NoDBWithoutHooksReplica.cqrs_save(data(1, name='a'))
    with pytest.raises(NotImplementedError):
        NoDBWithoutHooksReplica.cqrs_delete(data(1))
    with pytest.raises(NotImplementedError):
        consume(payload(SignalType.SAVE, 'no_db_without_hooks', data(1, name='a')))

    assert not NoDBWithoutHooksReplica.objects.exists()


# --- item 14: hook arguments -------------------------------------------------------------------


@pytest.mark.django_db
def test_item_14_hooks_get_exactly_the_original_arguments(recorded):
    previous = {'name': 'old'}
    assert route(
        SignalType.SAVE, 'hook_kwargs', data(1, name='a', parent=None), previous_data=previous
    )
    assert route(SignalType.SYNC, 'hook_kwargs', data(1, 1, name='b', parent=None), meta={'m': 1})
    assert route(SignalType.DELETE, 'hook_kwargs', data(1, 2), meta={'m': 1})

    assert [(c['hook'], c['kwargs']) for c in recorded] == [
        ('cqrs_save', {'previous_data': previous}),
        ('cqrs_create', {'previous_data': {'title': 'old'}}),
        ('cqrs_save', {'previous_data': None, 'sync': True}),
        ('cqrs_update', {'previous_data': None}),
        ('cqrs_delete', {}),
    ]
    assert [c['sync'] for c in recorded if 'sync' in c] == [False, True]


@pytest.mark.django_db
def test_item_14_meta_is_passed_to_every_hook_with_cqrs_meta(recorded):
    meta = {'by': 'test'}
    assert route(SignalType.SAVE, 'hook_kwargs_meta', data(1), meta=meta)
    assert route(SignalType.SYNC, 'hook_kwargs_meta', data(1, 1), meta=meta)
    assert route(SignalType.DELETE, 'hook_kwargs_meta', data(1, 2), meta=meta)

    assert [(c['hook'], c['kwargs']) for c in recorded] == [
        ('cqrs_save', {'previous_data': None, 'meta': meta}),
        ('cqrs_create', {'previous_data': None, 'meta': meta}),
        ('cqrs_save', {'previous_data': None, 'meta': meta, 'sync': True}),
        ('cqrs_update', {'previous_data': None, 'meta': meta}),
        ('cqrs_delete', {'meta': meta}),
    ]


@pytest.mark.django_db
def test_item_14_bulk_save_of_an_overriding_model_calls_cqrs_save_like_the_load(recorded):
    HookKwargsReplica.cqrs.bulk_save_instances(
        [data(1, name='a', parent=None), data(2, name='b', parent=None)]
    )

    assert [c['kwargs'] for c in hooks(recorded, 'cqrs_save')] == [{}, {}]
    assert HookKwargsReplica.objects.count() == 2


# --- item 15: foreign keys in mapped_data ------------------------------------------------------


@pytest.mark.django_db
def test_item_15_mapped_data_keeps_the_masters_foreign_key_name(recorded):
    assert route(SignalType.SAVE, 'hook_kwargs', data(1, name='a', parent=5))
    assert route(SignalType.SAVE, 'hook_kwargs', data(1, 1, name='b', parent=6))

    created, updated = hooks(recorded, 'cqrs_create'), hooks(recorded, 'cqrs_update')
    assert created[0]['mapped_data'] == {
        'id': 1,
        'title': 'a',
        'target': 5,
        'cqrs_revision': 0,
        'cqrs_updated': UPDATED,
    }
    assert updated[0]['mapped_data']['target'] == 6
    assert 'target_id' not in created[0]['mapped_data']
    assert HookKwargsReplica.objects.get(id=1).target_id == 6


@pytest.mark.django_db
def test_item_15_unmapped_foreign_key_keeps_its_name_and_default_hooks_apply_it(recorded):
    assert route(SignalType.SAVE, 'hook_kwargs_meta', data(1, target=7))
    assert hooks(recorded, 'cqrs_create')[0]['mapped_data']['target'] == 7
    assert HookKwargsMetaReplica.objects.get(id=1).target_id == 7

    assert route(SignalType.SAVE, 'plain_fk', data(1, target=3))
    assert route(SignalType.SAVE, 'plain_fk', data(1, 1, target=None))
    assert PlainFKReplica.objects.get(id=1).target_id is None


@pytest.mark.django_db
def test_item_15_bulk_save_applies_foreign_keys_by_master_name():
    PlainFKReplica.cqrs.bulk_save_instances([data(1, target=4), data(2, target=None)])

    assert dict(PlainFKReplica.objects.values_list('id', 'target_id')) == {1: 4, 2: None}


# --- item 16: mapped previous_data -------------------------------------------------------------


@pytest.mark.django_db
def test_item_16_previous_data_is_mapped_like_the_data(recorded):
    previous = {'name': 'old', 'parent': 3, 'cqrs_revision': 0, 'not_a_field': 1}
    assert route(
        SignalType.SAVE, 'hook_kwargs', data(1, name='a', parent=None), previous_data=previous
    )

    assert hooks(recorded, 'cqrs_create')[0]['kwargs'] == {
        'previous_data': {'title': 'old', 'target': 3}
    }


@pytest.mark.django_db
def test_item_16_previous_data_without_mapping_and_empty_previous_data(recorded):
    previous = {'name': 'old', 'unknown': 1}
    assert route(SignalType.SAVE, 'hook_kwargs_meta', data(1), previous_data=previous)
    assert route(SignalType.SAVE, 'hook_kwargs', data(1, name='a', parent=None), previous_data={})

    assert hooks(recorded, 'cqrs_create')[0]['kwargs']['previous_data'] == previous
    assert hooks(recorded, 'cqrs_create')[1]['kwargs'] == {'previous_data': None}


# --- item 17: database errors ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_item_17_database_error_is_logged_and_returns_none(cqrs_logs):
    result = route(SignalType.SAVE, 'db_error', data(1, name='a', fail_times=1))

    assert result is None
    assert not DBErrorReplica.objects.exists(), 'the failed message wrote nothing'
    assert logged(cqrs_logs, 'ERROR')[-1] == (
        'forced database error, attempt 1\nCQRS SAVE error: pk = 1, cqrs_revision = 0 (db_error).'
    )
    # The retry (the transport's) applies it.
    assert route(SignalType.SAVE, 'db_error', data(1, name='a', fail_times=1))
    assert DBErrorReplica.objects.get(id=1).name == 'a'


@pytest.mark.django_db
def test_item_17_database_error_inside_an_outer_transaction_keeps_it_usable():
    assert route(SignalType.SAVE, 'simplest', data(1, name='kept'))
    assert route(SignalType.SAVE, 'db_error', data(2, name='b', fail_times=1)) is None

    assert SimplestReplica.objects.get(id=1).name == 'kept'
    assert not DBErrorReplica.objects.exists()


@pytest.mark.django_db
def test_item_17_other_exceptions_propagate(monkeypatch):
    def explode(cls, master_data, **kwargs):
        raise RuntimeError('not a database error')

    monkeypatch.setattr(SimplestReplica, 'cqrs_save', classmethod(explode))
    with pytest.raises(RuntimeError):
        route(SignalType.SAVE, 'simplest', data(1, name='a'))


@pytest.mark.django_db
def test_item_17_worker_retries_on_a_none_result_then_dead_letters(cqrs_logs):
    """The worker's side of item 17 (the broker round trip is in tests/transport)."""
    worker, calls = recording_worker(delay_queue_max_size=10)
    body = payload(
        SignalType.SAVE, 'db_error', data(1, name='a', fail_times=99), retries=4
    ).to_dict()
    worker.handle_batch([Delivery(ujson_dumps(body), 'db_error', 'tag-1')])

    assert isinstance(worker.delay_queue, DelayQueue)
    assert worker.delay_queue.qsize() == 1
    message = worker.delay_queue.get()
    assert isinstance(message, DelayMessage)
    assert message.delivery_tag == 'tag-1'
    assert message.payload.cqrs_id == 'db_error'

    body['retries'] = 5  # CQRS_MAX_RETRIES of the test settings: no retry left
    worker.handle_batch([Delivery(ujson_dumps(body), 'db_error', 'tag-2')])
    assert calls.published == ['cqrs.dead_letter_replica.db_error']
    assert calls.acked == ['tag-2']
    assert calls.rejected == []
    assert 'CQRS is added to dead letter queue: pk = 1 (db_error), correlation_id = None.' in (
        logged(cqrs_logs)
    )


def ujson_dumps(value):
    import ujson

    return ujson.dumps(value)


# --- item 28: log wording ----------------------------------------------------------------------


@pytest.mark.django_db
def test_item_28_routing_and_data_check_lines(cqrs_logs):
    route('UPSERT', 'simplest', data(1))
    route(SignalType.SAVE, 'nope', data(1))
    route(SignalType.SAVE, 'simplest', {'id': 1, 'name': 'a'})
    route(SignalType.SAVE, 'simplest', {'name': 'a', 'cqrs_revision': 0, 'cqrs_updated': UPDATED})
    route(SignalType.DELETE, 'simplest', {'cqrs_revision': 0, 'cqrs_updated': UPDATED})
    route(SignalType.SAVE, 'filtered', data(1))

    assert logged(cqrs_logs, 'ERROR') == [
        'Bad signal type "UPSERT" for CQRS_ID "simplest".',
        'No model with such CQRS_ID: nope.',
        'CQRS sync fields are not provided in data (simplest).',
        'CQRS PK is not provided in data (simplest).',
        'CQRS PK is not provided in data (simplest).',
        'Bad master-replica mapping for name (filtered).',
    ]


@pytest.mark.django_db
def test_item_28_create_and_update_error_lines(cqrs_logs):
    route(SignalType.SAVE, 'tracked_parent', data(1, name=None))
    create_error = logged(cqrs_logs, 'ERROR')[-1]
    assert route(SignalType.SAVE, 'tracked_parent', data(1, name='a'))
    route(SignalType.SAVE, 'tracked_parent', data(1, 1, name=None))
    update_error = logged(cqrs_logs, 'ERROR')[-1]

    error, line = create_error.rsplit('\n', 1)
    assert 'NOT NULL' in error.upper() or 'null value' in error
    assert line == 'CQRS create error: pk = 1 (tracked_parent).'
    error, line = update_error.rsplit('\n', 1)
    assert error
    assert line == 'CQRS update error: pk = 1, cqrs_revision = 1 (tracked_parent).'


@pytest.mark.django_db
def test_item_28_lost_packages_line_has_no_final_period(cqrs_logs):
    assert route(SignalType.SAVE, 'simplest', data(1, 0, name='a'))
    assert route(SignalType.SAVE, 'simplest', data(1, 3, name='b'))

    assert logged(cqrs_logs, 'WARNING')[-1] == (
        'Lost or filtered out 2 CQRS packages: pk = 1, cqrs_revision = 3 (simplest)'
    )


def test_item_28_two_models_with_one_cqrs_id():
    class Duplicate:
        CQRS_ID = 'simplest'

    with pytest.raises(
        AssertionError, match=r"^Two models can't have the same CQRS_ID: simplest\."
    ):
        ReplicaRegistry.register_model(Duplicate)


def _payload():
    return payload(SignalType.SAVE, 'logged', {'id': 7}, correlation_id='corr-1', retries=2)


@pytest.mark.parametrize(
    ('method', 'args', 'level', 'line'),
    [
        (
            'log_produced',
            (),
            'INFO',
            'CQRS is published: pk = 7 (logged), correlation_id = corr-1.',
        ),
        ('log_consumed', (), 'INFO', 'CQRS is received: pk = 7 (logged), correlation_id = corr-1.'),
        (
            'log_consumed_accepted',
            (),
            'INFO',
            'CQRS is applied: pk = 7 (logged), correlation_id = corr-1.',
        ),
        (
            'log_consumed_denied',
            (),
            'WARNING',
            'CQRS is denied: pk = 7 (logged), correlation_id = corr-1.',
        ),
        (
            'log_consumed_failed',
            (),
            'WARNING',
            'CQRS is failed: pk = 7 (logged), correlation_id = corr-1, retries = 2.',
        ),
        (
            'log_delayed',
            (5, datetime(2030, 1, 1, tzinfo=dt_timezone.utc)),
            'WARNING',
            'CQRS is delayed: pk = 7 (logged), correlation_id = corr-1, delay = 5 sec, '
            'eta = 2030-01-01 00:00:00+00:00.',
        ),
        (
            'log_requeued',
            (),
            'WARNING',
            'CQRS is requeued: pk = 7 (logged), correlation_id = corr-1.',
        ),
        (
            'log_dead_letter',
            (),
            'WARNING',
            'CQRS is added to dead letter queue: pk = 7 (logged), correlation_id = corr-1.',
        ),
    ],
)
def test_item_28_transport_lines(cqrs_logs, method, args, level, line):
    getattr(LoggingMixin, method)(_payload(), *args)

    assert logged(cqrs_logs) == [line]
    assert cqrs_logs.records[-1].levelname == level


@pytest.mark.parametrize(
    ('body', 'line'),
    [
        (b'not json', "CQRS couldn't be parsed: b'not json'."),
        (
            '{"signal_type": "SAVE", "cqrs_id": "x", "instance_data": {}}',
            "CQRS couldn't proceed, instance_pk isn't found in body: "
            '{"signal_type": "SAVE", "cqrs_id": "x", "instance_data": {}}.',
        ),
    ],
)
def test_item_28_unusable_body_lines(body, line):
    assert parse_body(body) == (None, line)


# --- item 29: dj_cqrs.delay, dj_cqrs.logger, apply_query_timeouts, constants -----------------


def _delayed(tag, seconds):
    return DelayMessage(tag, _payload(), timezone.now() + timedelta(seconds=seconds))


def test_item_29_delay_queue_orders_by_eta():
    delay_queue = DelayQueue()
    for tag, seconds in (('late', 300), ('past', -10), ('soon', 100), ('older', -20)):
        delay_queue.put(_delayed(tag, seconds))

    assert delay_queue.qsize() == 4
    assert [m.delivery_tag for m in delay_queue.get_ready()] == ['older', 'past']
    assert delay_queue.qsize() == 2
    assert delay_queue.get().delivery_tag == 'soon'
    assert delay_queue.get().delivery_tag == 'late'
    with pytest.raises(queue.Empty):
        delay_queue.get()


def test_item_29_delay_queue_max_size():
    delay_queue = DelayQueue(max_size=2)
    delay_queue.put(_delayed(1, 10))
    assert not delay_queue.full()
    delay_queue.put(_delayed(2, 5))

    assert delay_queue.full()
    with pytest.raises(queue.Full):
        delay_queue.put(_delayed(3, 1))
    assert delay_queue.qsize() == 2
    with pytest.raises(AssertionError):
        DelayQueue(max_size=0)


def test_item_29_delay_message_attributes_and_same_eta_order():
    eta = timezone.now() - timedelta(seconds=1)
    payload = _payload()
    first, second = DelayMessage(1, payload, eta), DelayMessage(2, payload, eta)
    delay_queue = DelayQueue()
    delay_queue.put(first)
    delay_queue.put(second)

    assert (first.delivery_tag, first.payload, first.eta) == (1, payload, eta)
    assert list(delay_queue.get_ready()) == [first, second]


def test_item_29_constants():
    assert {'mysql', 'postgresql'} == constants.SUPPORTED_TIMEOUT_DB_VENDORS
    assert constants.PG_TIMEOUT_FLAG == 'statement timeout'
    assert constants.MYSQL_TIMEOUT_ERROR_CODE == 3024


@pytest.fixture
def _no_capturers():
    yield
    connection.execute_wrappers[:] = [
        w for w in connection.execute_wrappers if not isinstance(w, LastQueryCapturer)
    ]


@pytest.mark.django_db
@pytest.mark.usefixtures('_no_capturers')
def test_item_29_install_last_query_capturer_takes_a_model_class():
    install_last_query_capturer(SimplestReplica)
    install_last_query_capturer(SimplestReplica)
    SimplestReplica.objects.filter(name='captured_marker').exists()

    capturers = [w for w in connection.execute_wrappers if isinstance(w, LastQueryCapturer)]
    assert len(capturers) == 1
    assert 'captured_marker' in capturers[0].query


def _statement_timeout():
    with connection.cursor() as cursor:
        cursor.execute('SHOW statement_timeout')
        return cursor.fetchone()[0]


TIMEOUT_CONF = {'CQRS_QUERY_TIMEOUT': 900, 'CQRS_LOG_TIMED_OUT_QUERIES': True}


@pytest.mark.postgresql_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures('_no_capturers')
def test_item_29_apply_query_timeouts_outside_a_transaction_sets_the_session():
    try:
        with override_cqrs(replica={**TIMEOUT_CONF}):
            apply_query_timeouts(SimplestReplica)
        assert _statement_timeout() == '900ms'
        with transaction.atomic():
            pass
        assert _statement_timeout() == '900ms', 'set for the session'
    finally:
        with connection.cursor() as cursor:
            cursor.execute('RESET statement_timeout')
    capturers = [w for w in connection.execute_wrappers if isinstance(w, LastQueryCapturer)]
    assert len(capturers) == 1


@pytest.mark.postgresql_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures('_no_capturers')
def test_item_29_apply_query_timeouts_inside_a_transaction_lasts_until_its_end():
    with transaction.atomic():
        with override_cqrs(replica={**TIMEOUT_CONF}):
            apply_query_timeouts(SimplestReplica)
        assert _statement_timeout() == '900ms'
    assert _statement_timeout() == '0'


@pytest.mark.django_db
def test_item_29_consumer_applies_timeouts_through_apply_query_timeouts(mocker):
    from dj_cqrs.controller import consumer

    spy = mocker.spy(consumer, 'apply_query_timeouts')
    assert consume(payload(SignalType.SAVE, 'simplest', data(1, name='a')))

    spy.assert_called_once_with(SimplestReplica, 'default')


# --- item 30: TransportMock -------------------------------------------------------------------


def test_item_30_transport_mock_is_a_no_op_returning_the_payload():
    payload = _payload()

    assert TransportMock.produce(payload) is payload
    assert TransportMock.consume(payload) is payload
    assert TransportMock.consume() is None


@pytest.mark.django_db(transaction=True)
def test_item_30_transport_mock_silences_publishing_in_a_projects_tests():
    """How projects use it in their own test settings: saves work, nothing is sent."""
    with override_settings(
        CQRS={**settings.CQRS, 'transport': 'dj_cqrs.transport.mock.TransportMock'}
    ):
        master = SimplestModel.objects.create(id=1, name='silenced')
        master.name = 'still silenced'
        master.save()
        assert master.cqrs_sync()
        master.delete()

    assert not SimplestReplica.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_item_30_loopback_transport_applies_on_the_replica():
    with override_settings(
        CQRS={**settings.CQRS, 'transport': 'dj_cqrs.transport.loopback.LoopbackTransport'}
    ):
        SimplestModel.objects.create(id=1, name='looped back')

    assert SimplestReplica.objects.get(id=1).name == 'looped back'
    assert LoopbackTransport.consume() is None
