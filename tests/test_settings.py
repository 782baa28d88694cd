"""``settings.CQRS``: defaults, live values, validation and the current transport (SPEC §5)."""

import pytest
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from dj_cqrs.apps import validate_settings
from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import SignalType
from dj_cqrs.controller import producer
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.mixins import ReplicaMixin
from dj_cqrs.transport import BaseTransport, current_transport
from dj_cqrs.transport.loopback import LoopbackTransport
from dj_cqrs.utils import (
    get_delay_queue_max_size,
    get_message_expiration_dt,
    get_messages_prefetch_count_per_worker,
)
from tests.harness import payload, settings_error

MOCK = 'dj_cqrs.transport.mock.TransportMock'


class RecordingTransport(BaseTransport):
    """A small custom transport: remembers what it was asked to produce."""

    produced = []

    @staticmethod
    def produce(payload):
        RecordingTransport.produced.append(payload)
        return 'recorded'


class NotATransport:
    @staticmethod
    def produce(payload):
        return None


def meta_with_kwargs(**kwargs):  # a real function, referenced by dotted path below
    return {}


NOT_CALLABLE = 42


@pytest.fixture(autouse=True)
def _fresh_recording_transport():
    RecordingTransport.produced.clear()
    yield
    RecordingTransport.produced.clear()


def _payload(pk=1):
    return payload(SignalType.SAVE, 'simplest', {'id': 1}, pk)


# --- defaults ------------------------------------------------------------------------------


def test_values_of_the_test_settings():
    assert cqrs_settings.transport == 'dj_cqrs.transport.loopback.LoopbackTransport'
    assert cqrs_settings.queue == 'replica'
    assert cqrs_settings.master.CQRS_MESSAGE_TTL == 3600
    assert cqrs_settings.master.CQRS_AUTO_UPDATE_FIELDS is False
    assert cqrs_settings.replica.CQRS_MAX_RETRIES == 5
    assert cqrs_settings.replica.CQRS_RETRY_DELAY == 1


@override_settings(CQRS={'transport': MOCK, 'queue': 'orders'})
def test_defaults_when_not_set():
    assert cqrs_settings.exchange == 'cqrs'
    assert cqrs_settings.consumer_prefetch_count == 10
    assert cqrs_settings.master.CQRS_MESSAGE_TTL == 86400
    assert cqrs_settings.master.CQRS_AUTO_UPDATE_FIELDS is False
    assert cqrs_settings.master.correlation_function is None
    assert cqrs_settings.master.meta_function is None
    assert cqrs_settings.replica.CQRS_MAX_RETRIES == 30
    assert cqrs_settings.replica.CQRS_RETRY_DELAY == 2
    assert cqrs_settings.replica.delay_queue_max_size == 1000
    assert cqrs_settings.replica.dead_letter_queue == 'dead_letter_orders'
    assert cqrs_settings.replica.dead_message_ttl == 864000
    assert get_delay_queue_max_size() == 1000
    assert get_messages_prefetch_count_per_worker() == 1001


def test_default_dead_letter_queue_of_the_test_settings():
    assert cqrs_settings.replica.dead_letter_queue == 'dead_letter_replica'


@override_settings(
    CQRS={'transport': MOCK, 'queue': 'q', 'replica': {'dead_letter_queue': 'my_dead'}}
)
def test_explicit_dead_letter_queue():
    assert cqrs_settings.replica.dead_letter_queue == 'my_dead'


@override_settings(
    CQRS={'transport': MOCK, 'queue': 'q', 'replica': {'delay_queue_max_size': None}}
)
def test_unbounded_delay_queue():
    assert cqrs_settings.replica.delay_queue_max_size is None
    assert get_messages_prefetch_count_per_worker() == 0


# --- live values ---------------------------------------------------------------------------


def test_values_follow_override_settings():
    assert cqrs_settings.exchange == 'cqrs'
    new = {
        'transport': MOCK,
        'queue': 'other_queue',
        'exchange': 'other_exchange',
        'master': {'CQRS_MESSAGE_TTL': 10},
        'replica': {'CQRS_MAX_RETRIES': 7},
    }
    with override_settings(CQRS=new):
        assert cqrs_settings.exchange == 'other_exchange'
        assert cqrs_settings.queue == 'other_queue'
        assert cqrs_settings.master.CQRS_MESSAGE_TTL == 10
        assert cqrs_settings.replica.CQRS_MAX_RETRIES == 7
        assert cqrs_settings.replica.dead_letter_queue == 'dead_letter_other_queue'
    assert cqrs_settings.exchange == 'cqrs'
    assert cqrs_settings.queue == 'replica'
    assert cqrs_settings.master.CQRS_MESSAGE_TTL == 3600
    assert cqrs_settings.replica.CQRS_MAX_RETRIES == 5


def test_retry_hooks_use_live_settings():
    with override_settings(
        CQRS={'transport': MOCK, 'queue': 'q', 'replica': {'CQRS_MAX_RETRIES': 2}}
    ):
        assert ReplicaMixin.should_retry_cqrs(1) is True
        assert ReplicaMixin.should_retry_cqrs(2) is False
        assert ReplicaMixin.get_cqrs_retry_delay(0) == 2
    assert ReplicaMixin.get_cqrs_retry_delay(0) == 1


@override_settings(
    CQRS={'transport': MOCK, 'queue': 'q', 'replica': {'CQRS_DELAY_QUEUE_MAX_SIZE': 50}}
)
def test_delay_queue_max_size_alias():
    validate_settings()
    assert cqrs_settings.replica.delay_queue_max_size == 50
    assert get_delay_queue_max_size() == 50
    assert get_messages_prefetch_count_per_worker() == 51


# --- validate(): errors --------------------------------------------------------------------


@pytest.mark.parametrize('value', ['not a dict', ['transport'], 5])
def test_cqrs_not_a_dict(value):
    message = settings_error(value)
    assert 'CQRS' in message
    assert 'dict' in message


def test_missing_transport():
    message = settings_error({'queue': 'q'})
    assert "CQRS['transport']" in message


def test_transport_not_importable():
    message = settings_error({'transport': 'no_such_module.Transport', 'queue': 'q'})
    assert "CQRS['transport']" in message
    assert 'no_such_module.Transport' in message


def test_transport_not_a_base_transport_subclass():
    message = settings_error({'transport': 'tests.test_settings.NotATransport', 'queue': 'q'})
    assert "CQRS['transport']" in message
    assert 'BaseTransport' in message


def test_transport_not_a_class():
    message = settings_error({'transport': 'tests.test_settings.NOT_CALLABLE', 'queue': 'q'})
    assert "CQRS['transport']" in message


@pytest.mark.parametrize(
    ('cqrs', 'key'),
    [
        ({'replica': {'dead_message_ttl': 1.5j}}, 'dead_message_ttl'),
        ({'replica': {'dead_message_ttl': -1}}, 'dead_message_ttl'),
        ({'replica': {'dead_letter_queue': 7}}, 'dead_letter_queue'),
        ({'master': {'CQRS_AUTO_UPDATE_FIELDS': 'yes'}}, 'CQRS_AUTO_UPDATE_FIELDS'),
        ({'master': {'CQRS_AUTO_UPDATE_FIELDS': None}}, 'CQRS_AUTO_UPDATE_FIELDS'),
        ({'queue': 5}, 'queue'),
        ({'exchange': ['x']}, 'exchange'),
        ({'consumer_prefetch_count': 'ten'}, 'consumer_prefetch_count'),
        ({'consumer_prefetch_count': -1}, 'consumer_prefetch_count'),
        ({'port': 'abc'}, 'port'),
        ({'port': 0}, 'port'),
        ({'master': None}, 'master'),
        ({'replica': None}, 'replica'),
        ({'master': 'not a dict'}, 'master'),
        ({'replica': ['not', 'a', 'dict']}, 'replica'),
        ({'master': {'meta_function': NOT_CALLABLE}}, 'meta_function'),
        ({'master': {'meta_function': 'no_such_module.func'}}, 'meta_function'),
        ({'master': {'meta_function': 'tests.test_settings.NOT_CALLABLE'}}, 'meta_function'),
        ({'master': {'correlation_function': 'tests.test_settings.nope'}}, 'correlation_function'),
    ],
)
def test_wrong_types_name_the_key(cqrs, key):
    settings_value = {'transport': MOCK}
    settings_value.setdefault('queue', 'q')
    settings_value.update(cqrs)
    message = settings_error(settings_value)
    assert key in message


def test_meta_function_dotted_path_is_resolved():
    cqrs = {
        'transport': MOCK,
        'queue': 'q',
        'master': {'meta_function': 'tests.test_settings.meta_with_kwargs'},
    }
    with override_settings(CQRS=cqrs):
        validate_settings()
        assert cqrs_settings.master.meta_function is meta_with_kwargs


def test_correlation_function_callable_is_kept():
    def correlation(signal_type, cqrs_id, instance_pk, queue):
        return f'{signal_type}-{cqrs_id}-{instance_pk}'

    cqrs = {'transport': MOCK, 'queue': 'q', 'master': {'correlation_function': correlation}}
    with override_settings(CQRS=cqrs):
        validate_settings()
        assert cqrs_settings.master.correlation_function is correlation


# --- validate(): out-of-range numbers ------------------------------------------------------


@pytest.mark.parametrize(
    ('section', 'key', 'value', 'default'),
    [
        ('replica', 'CQRS_MAX_RETRIES', -1, 30),
        ('replica', 'CQRS_RETRY_DELAY', -3, 2),
        ('replica', 'delay_queue_max_size', 0, 1000),
        ('master', 'CQRS_MESSAGE_TTL', 0, 86400),
        ('master', 'CQRS_MESSAGE_TTL', -5, 86400),
    ],
)
def test_out_of_range_falls_back_with_warning(section, key, value, default, cqrs_warnings):
    cqrs = {'transport': MOCK, 'queue': 'q', section: {key: value}}
    with override_settings(CQRS=cqrs):
        validate_settings()
        assert getattr(getattr(cqrs_settings, section), key) == default
        warnings = cqrs_warnings()
        assert len(warnings) == 1
        assert key in warnings[0]
        # Also without validate(): values read lazily fall back the same way.
        cqrs_settings.reload()
        assert getattr(getattr(cqrs_settings, section), key) == default


def test_zero_retries_is_allowed(cqrs_warnings):
    cqrs = {'transport': MOCK, 'queue': 'q', 'replica': {'CQRS_MAX_RETRIES': 0}}
    with override_settings(CQRS=cqrs):
        validate_settings()
        assert cqrs_settings.replica.CQRS_MAX_RETRIES == 0
        assert ReplicaMixin.should_retry_cqrs(0) is False
    assert cqrs_warnings() == []


def test_valid_settings_give_no_warning(cqrs_warnings):
    validate_settings()
    assert cqrs_warnings() == []


# --- None where allowed --------------------------------------------------------------------


def test_message_ttl_none_means_never_expires():
    cqrs = {'transport': MOCK, 'queue': 'q', 'master': {'CQRS_MESSAGE_TTL': None}}
    with override_settings(CQRS=cqrs):
        validate_settings()
        assert cqrs_settings.master.CQRS_MESSAGE_TTL is None
        assert get_message_expiration_dt() is None
        payload = TransportPayload.from_message(
            {'signal_type': 'SAVE', 'cqrs_id': 'simplest', 'instance_data': {}, 'instance_pk': 1}
        )
        assert payload.expires is None
        assert payload.is_expired() is False
    assert get_message_expiration_dt() is not None


def test_max_retries_none_means_forever():
    cqrs = {'transport': MOCK, 'queue': 'q', 'replica': {'CQRS_MAX_RETRIES': None}}
    with override_settings(CQRS=cqrs):
        validate_settings()
        assert cqrs_settings.replica.CQRS_MAX_RETRIES is None
        assert ReplicaMixin.should_retry_cqrs(10_000) is True


def test_dead_message_ttl_none_allowed():
    cqrs = {'transport': MOCK, 'queue': 'q', 'replica': {'dead_message_ttl': None}}
    with override_settings(CQRS=cqrs):
        validate_settings()
        assert cqrs_settings.replica.dead_message_ttl is None


# --- app ready -----------------------------------------------------------------------------


def test_app_ready_validates():
    config = apps.get_app_config('dj_cqrs')
    assert type(config).__name__ == 'CQRSConfig'
    with override_settings(CQRS={'queue': 'q'}), pytest.raises(ImproperlyConfigured) as excinfo:
        config.ready()
    assert 'transport' in str(excinfo.value)


def test_app_ready_rejects_wrong_type():
    config = apps.get_app_config('dj_cqrs')
    bad = {'transport': MOCK, 'queue': 'q', 'master': {'CQRS_AUTO_UPDATE_FIELDS': 'yes'}}
    with override_settings(CQRS=bad), pytest.raises(ImproperlyConfigured) as excinfo:
        config.ready()
    assert 'CQRS_AUTO_UPDATE_FIELDS' in str(excinfo.value)


# --- current transport ---------------------------------------------------------------------


def test_current_transport_is_the_configured_one():
    assert current_transport.produce is LoopbackTransport.produce


def test_current_transport_follows_override_settings():
    payload = _payload()
    with override_settings(CQRS={'transport': 'tests.test_settings.RecordingTransport'}):
        assert current_transport.produce(payload) == 'recorded'
        assert RecordingTransport.produced == [payload]
    assert current_transport.produce is LoopbackTransport.produce
    assert RecordingTransport.produced == [payload]


def test_producer_goes_through_current_transport():
    payload = _payload(pk=42)
    with override_settings(CQRS={'transport': 'tests.test_settings.RecordingTransport'}):
        producer.produce(payload)
    assert RecordingTransport.produced == [payload]


def test_current_transport_without_transport_setting():
    with override_settings(CQRS={'queue': 'q'}), pytest.raises(ImproperlyConfigured):
        current_transport.produce(_payload())
