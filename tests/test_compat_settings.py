"""Issue 9, items 19, 20 and 20a: ``settings.CQRS`` validation with django-cqrs's outcomes.

The expected outcomes were taken by running django-cqrs 3.1.0's own validation on the same
values (see docs/compatibility.md for the table).
"""

import copy

import pytest
from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from dj_cqrs.apps import validate_settings
from dj_cqrs.conf import CQRSConfigurationError, TransportImportError, cqrs_settings
from dj_cqrs.registries import MasterRegistry, ReplicaRegistry
from dj_cqrs.transport.rabbit_mq import connection_parameters

MOCK = 'dj_cqrs.transport.mock.TransportMock'
RABBIT = 'dj_cqrs.transport.RabbitMQTransport'


def meta_with_kwargs(**kwargs):
    return {'from': 'settings'}


def meta_without_kwargs(obj):
    return {}


def correlation(signal_type, cqrs_id, instance_pk, queue):
    return f'{cqrs_id}-{instance_pk}'


class MetaCallable:
    def __call__(self, **kwargs):
        return {}


@pytest.fixture
def project(monkeypatch):
    """Choose which CQRS models the project has: 'both', 'master', 'replica' or 'none'."""

    def configure(sides):
        has_master = sides in ('both', 'master')
        has_replica = sides in ('both', 'replica')
        monkeypatch.setattr(MasterRegistry, 'models', {'m': object} if has_master else {})
        monkeypatch.setattr(ReplicaRegistry, 'models', {'r': object} if has_replica else {})

    configure('both')
    return configure


def _cqrs(**common):
    return {'transport': MOCK, 'queue': 'q', **common}


def _validate(cqrs):
    """Validate ``cqrs`` as settings.CQRS; return the validated values and the dict after."""
    with override_settings(CQRS=cqrs):
        validate_settings()
        return cqrs_settings._values, cqrs


def _error(cqrs):
    with override_settings(CQRS=cqrs), pytest.raises(CQRSConfigurationError) as excinfo:
        validate_settings()
    return excinfo.value


# --- item 19: validation only with CQRS models -----------------------------------------------


def test_item_19_no_validation_without_cqrs_models(project):
    project('none')
    cqrs = {'queue': 5, 'master': None, 'replica': {'CQRS_MAX_RETRIES': 'x'}}
    _, after = _validate(copy.deepcopy(cqrs))
    assert after == cqrs


def test_item_19_missing_or_none_cqrs_setting_is_an_error(project):
    with override_settings(CQRS=None), pytest.raises(CQRSConfigurationError):
        validate_settings()
    with override_settings(), pytest.raises(CQRSConfigurationError) as excinfo:
        del settings.CQRS
        validate_settings()
    assert 'settings.CQRS' in str(excinfo.value)


@pytest.mark.parametrize('sides', ['master', 'replica', 'both'])
def test_item_19_validation_with_either_kind_of_model(project, sides):
    project(sides)
    assert 'transport' in str(_error({'queue': 'q'}))


def test_item_19_app_start_validated_and_filled_the_test_settings():
    """ready() ran with the test apps' models registered: the defaults are in settings.CQRS."""
    assert settings.CQRS['master'] == {
        'CQRS_AUTO_UPDATE_FIELDS': False,
        'CQRS_MESSAGE_TTL': 3600,
        'correlation_function': None,
        'meta_function': None,
    }
    assert settings.CQRS['replica'] == {
        'CQRS_MAX_RETRIES': 5,
        'CQRS_RETRY_DELAY': 1,
        'delay_queue_max_size': 1000,
    }


# --- item 19: master / replica sections ---------------------------------------------------------


@pytest.mark.parametrize('section', ['master', 'replica'])
@pytest.mark.parametrize('value', [None, 'x', ['CQRS_MAX_RETRIES']])
def test_item_19_section_that_is_not_a_dict_is_an_error(project, section, value):
    error = _error(_cqrs(**{section: value}))
    assert f"CQRS['{section}']" in str(error)


def test_item_19_defaults_filled_into_settings_in_place(project):
    cqrs = _cqrs()
    _validate(cqrs)
    assert cqrs == {
        'transport': MOCK,
        'queue': 'q',
        'master': {
            'CQRS_AUTO_UPDATE_FIELDS': False,
            'CQRS_MESSAGE_TTL': 86400,
            'correlation_function': None,
            'meta_function': None,
        },
        'replica': {'CQRS_MAX_RETRIES': 30, 'CQRS_RETRY_DELAY': 2, 'delay_queue_max_size': 1000},
    }


def test_item_19_missing_keys_filled_and_others_kept(project):
    cqrs = _cqrs(
        master={'CQRS_MESSAGE_TTL': 10, 'outbox': False},
        replica={'CQRS_MAX_RETRIES': None, 'dead_message_ttl': 5},
    )
    _validate(cqrs)
    assert cqrs['master'] == {
        'CQRS_MESSAGE_TTL': 10,
        'outbox': False,
        'CQRS_AUTO_UPDATE_FIELDS': False,
        'correlation_function': None,
        'meta_function': None,
    }
    assert cqrs['replica'] == {
        'CQRS_MAX_RETRIES': None,
        'dead_message_ttl': 5,
        'CQRS_RETRY_DELAY': 2,
        'delay_queue_max_size': 1000,
    }


def test_item_19_replica_only_project_gets_no_master_section(project):
    project('replica')
    cqrs = _cqrs()
    _validate(cqrs)
    assert 'master' not in cqrs
    assert cqrs['replica']['CQRS_RETRY_DELAY'] == 2


def test_item_19_master_only_project_gets_no_replica_section_and_needs_no_queue(project):
    project('master')
    cqrs = {'transport': MOCK, 'queue': 5}
    _validate(cqrs)
    assert 'replica' not in cqrs
    assert cqrs['master']['CQRS_MESSAGE_TTL'] == 86400


def test_item_19_present_replica_section_needs_the_queue_even_on_a_master(project):
    project('master')
    assert 'queue' in str(_error({'transport': MOCK, 'replica': {}}))


@pytest.mark.parametrize('queue', [None, '', 5])
def test_item_19_replica_needs_a_string_queue(project, queue):
    project('replica')
    assert "CQRS['queue']" in str(_error({'transport': MOCK, 'queue': queue}))


# --- item 19: numbers with the original's fallback and warning ---------------------------------

FALLBACKS = [
    # (section, key, value, default, the original's warning)
    ('master', 'CQRS_MESSAGE_TTL', 0, 86400, 'Settings CQRS_MESSAGE_TTL=0 is invalid'),
    ('master', 'CQRS_MESSAGE_TTL', -5, 86400, 'Settings CQRS_MESSAGE_TTL=-5 is invalid'),
    ('master', 'CQRS_MESSAGE_TTL', False, 86400, 'Settings CQRS_MESSAGE_TTL=False is invalid'),
    ('master', 'CQRS_MESSAGE_TTL', 1.5, 86400, 'Settings CQRS_MESSAGE_TTL=1.5 is invalid'),
    ('master', 'CQRS_MESSAGE_TTL', 3600.0, 86400, 'Settings CQRS_MESSAGE_TTL=3600.0 is invalid'),
    ('master', 'CQRS_MESSAGE_TTL', '3600', 86400, 'Settings CQRS_MESSAGE_TTL=3600 is invalid'),
    ('master', 'CQRS_MESSAGE_TTL', 'abc', 86400, 'Settings CQRS_MESSAGE_TTL=abc is invalid'),
    ('replica', 'CQRS_MAX_RETRIES', -1, 30, 'Replica setting CQRS_MAX_RETRIES=-1 is invalid'),
    ('replica', 'CQRS_MAX_RETRIES', 2.0, 30, 'Replica setting CQRS_MAX_RETRIES=2.0 is invalid'),
    ('replica', 'CQRS_MAX_RETRIES', '5', 30, 'Replica setting CQRS_MAX_RETRIES=5 is invalid'),
    ('replica', 'CQRS_RETRY_DELAY', None, 2, 'Replica setting CQRS_RETRY_DELAY=None is invalid'),
    ('replica', 'CQRS_RETRY_DELAY', -3, 2, 'Replica setting CQRS_RETRY_DELAY=-3 is invalid'),
    ('replica', 'CQRS_RETRY_DELAY', 1.5, 2, 'Replica setting CQRS_RETRY_DELAY=1.5 is invalid'),
    ('replica', 'CQRS_RETRY_DELAY', '2', 2, 'Replica setting CQRS_RETRY_DELAY=2 is invalid'),
    ('replica', 'delay_queue_max_size', 0, 1000, 'Settings delay_queue_max_size=0 is invalid'),
    ('replica', 'delay_queue_max_size', -1, 1000, 'Settings delay_queue_max_size=-1 is invalid'),
    ('replica', 'delay_queue_max_size', 10.0, 1000, 'Settings delay_queue_max_size=10.0 is'),
    ('replica', 'delay_queue_max_size', '10', 1000, 'Settings delay_queue_max_size=10 is invalid'),
]


@pytest.mark.parametrize(('section', 'key', 'value', 'default', 'warning'), FALLBACKS)
def test_item_19_invalid_number_warns_and_falls_back_to_the_default(
    project, cqrs_warnings, section, key, value, default, warning
):
    cqrs = _cqrs(**{section: {key: value}})
    values, after = _validate(cqrs)
    assert getattr(getattr(values, section), key) == default
    assert after[section][key] == default
    assert cqrs_warnings() == [f'{warning.split(" is")[0]} is invalid, using default {default}.']
    cqrs_settings.reload()
    with override_settings(CQRS=_cqrs(**{section: {key: value}})):
        assert getattr(getattr(cqrs_settings, section), key) == default


KEPT = [
    # (section, key, value, value used)
    ('master', 'CQRS_MESSAGE_TTL', None, None),
    ('master', 'CQRS_MESSAGE_TTL', 1, 1),
    ('master', 'CQRS_MESSAGE_TTL', True, 1),
    ('replica', 'CQRS_MAX_RETRIES', None, None),
    ('replica', 'CQRS_MAX_RETRIES', 0, 0),
    ('replica', 'CQRS_MAX_RETRIES', True, 1),
    ('replica', 'CQRS_RETRY_DELAY', 0, 0),
    ('replica', 'CQRS_RETRY_DELAY', True, 1),
    ('replica', 'delay_queue_max_size', None, None),
    ('replica', 'delay_queue_max_size', 10, 10),
    ('replica', 'delay_queue_max_size', True, 1),
]


@pytest.mark.parametrize(('section', 'key', 'value', 'used'), KEPT)
def test_item_19_valid_number_is_kept_without_warning(
    project, cqrs_warnings, section, key, value, used
):
    values, after = _validate(_cqrs(**{section: {key: value}}))
    assert getattr(getattr(values, section), key) == used
    assert after[section][key] is value
    assert cqrs_warnings() == []


def test_item_19_retry_delay_none_means_the_default_two(project):
    values, _ = _validate(_cqrs(replica={'CQRS_RETRY_DELAY': None}))
    assert values.replica.CQRS_RETRY_DELAY == 2


# --- item 19: CQRS_AUTO_UPDATE_FIELDS, meta_function, correlation_function ---------------------


@pytest.mark.parametrize('value', [None, 'yes', 1, 0])
def test_item_19_auto_update_fields_must_be_a_bool(project, value):
    error = _error(_cqrs(master={'CQRS_AUTO_UPDATE_FIELDS': value}))
    assert 'CQRS_AUTO_UPDATE_FIELDS' in str(error)


@pytest.mark.parametrize(
    'value',
    [meta_without_kwargs, 'tests.test_compat_settings.meta_without_kwargs', 42, 'no_such.f'],
)
def test_item_19_meta_function_must_be_a_function_accepting_kwargs(project, value):
    assert 'meta_function' in str(_error(_cqrs(master={'meta_function': value})))


@pytest.mark.parametrize('value', ['tests.test_compat_settings.meta_with_kwargs', meta_with_kwargs])
def test_item_19_meta_function_resolved_into_settings(project, value):
    values, after = _validate(_cqrs(master={'meta_function': value}))
    assert values.master.meta_function is meta_with_kwargs
    assert after['master']['meta_function'] is meta_with_kwargs


def test_item_19_meta_function_may_be_any_callable_with_kwargs(project):
    """Accepting more than the original (it wants a plain function)."""
    meta = MetaCallable()
    values, _ = _validate(_cqrs(master={'meta_function': meta}))
    assert values.master.meta_function is meta


@pytest.mark.parametrize('field', ['meta_function', 'correlation_function'])
@pytest.mark.parametrize('value', [None, '', 0, False])
def test_item_19_false_functions_mean_none(project, field, value):
    values, after = _validate(_cqrs(master={field: value}))
    assert getattr(values.master, field) is None
    assert after['master'][field] is None


def test_item_19_correlation_function_callable_or_dotted_path(project):
    values, after = _validate(_cqrs(master={'correlation_function': correlation}))
    assert values.master.correlation_function is correlation
    path = 'tests.test_compat_settings.correlation'
    values, after = _validate(_cqrs(master={'correlation_function': path}))
    assert values.master.correlation_function is correlation
    assert after['master']['correlation_function'] is correlation


@pytest.mark.parametrize('value', [42, 'no_such.correlation'])
def test_item_19_correlation_function_not_callable_is_an_error(project, value):
    assert 'correlation_function' in str(_error(_cqrs(master={'correlation_function': value})))


# --- item 20: one exception class for configuration errors -------------------------------------


def test_item_20_configuration_error_is_both_classes():
    assert issubclass(CQRSConfigurationError, ImproperlyConfigured)
    assert issubclass(CQRSConfigurationError, AssertionError)
    assert issubclass(TransportImportError, CQRSConfigurationError)
    assert issubclass(TransportImportError, ImportError)


@pytest.mark.parametrize(
    'cqrs',
    [
        {'queue': 'q'},
        {'transport': '', 'queue': 'q'},
        {'transport': 'tests.test_compat_settings.MetaCallable', 'queue': 'q'},
        {'transport': MOCK},
        _cqrs(master=None),
        _cqrs(replica='x'),
        _cqrs(master={'CQRS_AUTO_UPDATE_FIELDS': None}),
        _cqrs(master={'meta_function': meta_without_kwargs}),
        'not a dict',
    ],
)
@pytest.mark.parametrize('caught', [AssertionError, ImproperlyConfigured])
def test_item_20_configuration_errors_catchable_both_ways(project, cqrs, caught):
    with override_settings(CQRS=cqrs), pytest.raises(caught):
        validate_settings()


def test_item_20_unimportable_transport_is_also_an_import_error(project):
    cqrs = _cqrs(transport='no_such_module.Transport')
    with override_settings(CQRS=cqrs), pytest.raises(ImportError) as excinfo:
        validate_settings()
    assert isinstance(excinfo.value, AssertionError)
    assert 'no_such_module.Transport' in str(excinfo.value)


def test_item_20_app_ready_raises_the_configuration_error(project):
    config = apps.get_app_config('dj_cqrs')
    with override_settings(CQRS={'queue': 'q'}), pytest.raises(AssertionError):
        config.ready()


# --- item 20a: what the original accepts is accepted, normalised, without warnings -------------

ACCEPTED = [
    # (settings.CQRS, path of the value, value used)
    (_cqrs(port='5672'), ('port',), 5672),
    (_cqrs(port=' 5672 '), ('port',), 5672),
    (_cqrs(port=5672.0), ('port',), 5672),
    (_cqrs(port=None), ('port',), None),
    (_cqrs(consumer_prefetch_count='10'), ('consumer_prefetch_count',), 10),
    (_cqrs(consumer_prefetch_count=0), ('consumer_prefetch_count',), 0),
    (_cqrs(consumer_prefetch_count=1.5), ('consumer_prefetch_count',), 1),
    (_cqrs(consumer_prefetch_count=None), ('consumer_prefetch_count',), 10),
    (_cqrs(exchange=None), ('exchange',), 'cqrs'),
    (_cqrs(url=None), ('url',), None),
    (_cqrs(replica={'dead_letter_queue': None}), ('replica', 'dead_letter_queue'), 'dead_letter_q'),
    (_cqrs(replica={'dead_message_ttl': 0}), ('replica', 'dead_message_ttl'), 0),
    (_cqrs(replica={'dead_message_ttl': '10'}), ('replica', 'dead_message_ttl'), 10),
    (_cqrs(replica={'dead_message_ttl': True}), ('replica', 'dead_message_ttl'), 1),
    (_cqrs(replica={'dead_message_ttl': 1.5}), ('replica', 'dead_message_ttl'), 1.5),
    (_cqrs(replica={'dead_message_ttl': None}), ('replica', 'dead_message_ttl'), None),
    (_cqrs(replica={'CQRS_QUERY_TIMEOUT': '100'}), ('replica', 'CQRS_QUERY_TIMEOUT'), 100),
    (_cqrs(replica={'CQRS_QUERY_TIMEOUT': 1.5}), ('replica', 'CQRS_QUERY_TIMEOUT'), 1),
    (_cqrs(replica={'CQRS_QUERY_TIMEOUT': -1}), ('replica', 'CQRS_QUERY_TIMEOUT'), 0),
    (_cqrs(replica={'CQRS_QUERY_TIMEOUT': None}), ('replica', 'CQRS_QUERY_TIMEOUT'), 0),
    (
        _cqrs(replica={'CQRS_LOG_TIMED_OUT_QUERIES': 'yes'}),
        ('replica', 'CQRS_LOG_TIMED_OUT_QUERIES'),
        True,
    ),
    (
        _cqrs(replica={'CQRS_LOG_TIMED_OUT_QUERIES': None}),
        ('replica', 'CQRS_LOG_TIMED_OUT_QUERIES'),
        False,
    ),
    (_cqrs(replica={'CQRS_QUERY_LOGGER': ''}), ('replica', 'CQRS_QUERY_LOGGER'), None),
    (_cqrs(replica={'CQRS_DELAY_QUEUE_MAX_SIZE': 50}), ('replica', 'delay_queue_max_size'), 50),
    (_cqrs(publisher_confirms=None), ('publisher_confirms',), True),
    (_cqrs(master={'outbox': None}), ('master', 'outbox'), False),
]


@pytest.mark.parametrize(('cqrs', 'path', 'used'), ACCEPTED, ids=lambda v: repr(v)[:60])
def test_item_20a_accepted_and_normalised_without_warning(project, cqrs_warnings, cqrs, path, used):
    values, _ = _validate(copy.deepcopy(cqrs))
    for name in path:
        values = getattr(values, name)
    assert values == used
    assert type(values) is type(used)
    assert cqrs_warnings() == []


def test_item_20a_the_original_demo_settings_start(project, cqrs_warnings):
    """django-cqrs's demo project configures RabbitMQ with the port as a string."""
    demo = {
        'transport': RABBIT,
        'host': 'localhost',
        'port': '5672',
        'user': 'guest',
        'password': 'guest',
        'queue': 'demo_replica',
        'master': {'CQRS_AUTO_UPDATE_FIELDS': True},
    }
    with override_settings(CQRS=demo):
        apps.get_app_config('dj_cqrs').ready()
        params = connection_parameters()
    assert (params.host, params.port) == ('localhost', 5672)
    assert cqrs_warnings() == []


REJECTED = [
    # Values that never work with the original either (it fails when connecting or consuming);
    # rejected at start-up. Deliberately different, see docs/compatibility.md.
    (_cqrs(port='abc'), 'port'),
    (_cqrs(port=0), 'port'),
    (_cqrs(port=70000), 'port'),
    (_cqrs(host=5), 'host'),
    (_cqrs(user=5), 'user'),
    (_cqrs(password=5), 'password'),
    (_cqrs(url=5), 'url'),
    (_cqrs(exchange=5), 'exchange'),
    (_cqrs(consumer_prefetch_count=-1), 'consumer_prefetch_count'),
    (_cqrs(consumer_prefetch_count='many'), 'consumer_prefetch_count'),
    (_cqrs(replica={'dead_letter_queue': 7}), 'dead_letter_queue'),
    (_cqrs(replica={'dead_message_ttl': -1}), 'dead_message_ttl'),
    (_cqrs(replica={'CQRS_QUERY_TIMEOUT': 'abc'}), 'CQRS_QUERY_TIMEOUT'),
    (_cqrs(replica={'CQRS_QUERY_LOGGER': 5}), 'CQRS_QUERY_LOGGER'),
    # Keys of this package only (the original ignores them).
    (_cqrs(publisher_confirms='yes'), 'publisher_confirms'),
    (_cqrs(master={'outbox': 'yes'}), 'outbox'),
    (_cqrs(ssl_options={'bogus': 1}), 'ssl_options'),
    (_cqrs(ssl_options='x'), 'ssl_options'),
]


@pytest.mark.parametrize(('cqrs', 'key'), REJECTED, ids=lambda v: repr(v)[:60])
def test_item_20a_values_that_cannot_work_are_rejected_naming_the_key(project, cqrs, key):
    assert key in str(_error(copy.deepcopy(cqrs)))
