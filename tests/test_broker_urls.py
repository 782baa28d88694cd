"""Issue 11, items 1 and 2 without a broker: several broker URLs and the replica queue type.

``CQRS['url']`` may hold several URLs separated by ``;`` or be a list / tuple of URLs (failover
order); ``CQRS['replica']['queue_type']`` is ``'classic'`` (default) or ``'quorum'``. The broker
side is in ``tests/transport/test_failover.py`` and ``tests/transport/test_quorum.py``.
"""

import logging

import pika
import pytest
from django.test import override_settings

from dj_cqrs.apps import validate_settings
from dj_cqrs.conf import CQRSConfigurationError, broker_urls, cqrs_settings
from dj_cqrs.management._supervisor import EXIT_CONFIGURATION_ERROR, Supervisor
from dj_cqrs.transport._lifecycle import (
    StopFlag,
    connect_first_live,
    consume_until_stopped,
    queue_type_error,
    replica_queue_arguments,
)
from dj_cqrs.transport.kombu import _location, _node_urls, _ssl_option
from dj_cqrs.transport.rabbit_mq import (
    all_connection_parameters,
    broker_location,
    broker_locations,
    connection_parameters,
)
from tests.harness import settings_error

RABBIT = 'dj_cqrs.transport.RabbitMQTransport'
URL_A = 'amqp://alice:pw-a@node-a:5671/%2F'
URL_B = 'amqp://bob:pw-b@node-b:5672/vh'


def _cqrs(**values):
    replica = values.pop('replica', {})
    return {'transport': RABBIT, 'queue': 'replica', 'replica': replica, **values}


# --- item 1: URL parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    'url',
    [
        f'{URL_A};{URL_B}',
        f' {URL_A} ; {URL_B} ;',
        [URL_A, URL_B],
        (URL_A, URL_B),
    ],
)
def test_item_01_several_urls_as_a_semicolon_string_or_a_list(url):
    assert broker_urls(url) == [URL_A, URL_B]
    with override_settings(CQRS=_cqrs(url=url)):
        validate_settings()
        nodes = all_connection_parameters()
        assert [(p.host, p.port, p.virtual_host) for p in nodes] == [
            ('node-a', 5671, '/'),
            ('node-b', 5672, 'vh'),
        ]
        assert [p.credentials.username for p in nodes] == ['alice', 'bob']
        assert connection_parameters().host == 'node-a'
        assert broker_locations() == 'node-a:5671/%2F, node-b:5672/vh'.replace('%2F', '/')
        assert _node_urls() == [URL_A, URL_B]


def test_item_01_one_url_is_used_as_before():
    with override_settings(CQRS=_cqrs(url=URL_A)):
        validate_settings()
        assert cqrs_settings.url == URL_A
        assert all_connection_parameters() == [pika.URLParameters(URL_A)]
        assert connection_parameters() == pika.URLParameters(URL_A)
        assert broker_locations() == broker_location() == 'node-a:5671//'


def test_item_01_host_port_user_password_still_make_one_node():
    cqrs = _cqrs(host='rabbit', port=5673, user='u', password='p')
    with override_settings(CQRS=cqrs):
        validate_settings()
        [params] = all_connection_parameters()
    assert (params.host, params.port, params.credentials.username) == ('rabbit', 5673, 'u')


def test_item_01_tls_is_chosen_per_url():
    with override_settings(CQRS=_cqrs(url=['amqps://a:1/%2F', 'amqp://b:2/%2F'])):
        tls, plain = all_connection_parameters()
        assert tls.ssl_options is not None and plain.ssl_options is None
        assert _ssl_option('amqp://b:2/%2F') is False
        assert _ssl_option('amqps://a:1/%2F')['server_hostname'] == 'a'


@pytest.mark.parametrize(
    ('url', 'expected'),
    [
        ([], "settings.CQRS['url'] must not be an empty list of URLs."),
        ((), "settings.CQRS['url'] must not be an empty list of URLs."),
        ([URL_A, 5], "settings.CQRS['url'] must be a list of URL strings; item 5 (int)"),
        ([URL_A, ''], "settings.CQRS['url'] must be a list of URL strings; item ''"),
        (';', "settings.CQRS['url'] has no URL"),
        ({'a': URL_A}, "settings.CQRS['url'] must be a URL string"),
    ],
)
def test_item_01_bad_url_lists_are_rejected_naming_the_key(url, expected):
    message = settings_error(_cqrs(url=url))
    assert expected in message
    assert 'pw-a' not in message


def test_item_01_kombu_locations_never_show_credentials():
    import kombu

    assert _location(kombu.Connection('amqp://alice:pw-a@node-a:5671/%2F')) == 'node-a:5671//'
    assert _location(kombu.Connection('redis://:pw@cache:6380/2')) == 'cache:6380/2'


def test_item_01_connect_first_live_goes_round_robin_and_logs_nodes(caplog):
    caplog.set_level(logging.INFO, 'django-cqrs')
    tried = []

    def connect(index):
        tried.append(index)
        if index != 0:
            raise ConnectionRefusedError
        return 'connection 0'

    assert connect_first_live(connect, ['a:1', 'b:2', 'c:3'], 1, (OSError,)) == (
        0,
        'connection 0',
    )
    assert tried == [1, 2, 0]
    assert 'CQRS publisher cannot connect to b:2 (ConnectionRefusedError); trying c:3.' in (
        caplog.text
    )
    tried.clear()
    with pytest.raises(ConnectionRefusedError):
        connect_first_live(lambda i: connect(i + 1), ['b:2', 'c:3'], 0, (OSError,))
    assert tried == [1, 2]


def test_item_01_consume_loop_moves_to_the_next_node_after_a_loss(caplog):
    """Node 0 refuses, node 1 is consumed until it is lost, node 2 consumed until stopped."""
    stop = StopFlag()
    events = []

    def connect(index):
        events.append(('connect', index))
        if index == 0 and len(events) == 1:
            raise ConnectionRefusedError
        return index

    def consume_on(index):
        events.append(('consume', index))
        if index == 1:
            raise ConnectionResetError
        stop.set()

    consume_until_stopped(
        stop, connect, consume_on, lambda c: None, (OSError,), ['a:1', 'b:2', 'c:3'], 0, 0
    )
    assert events == [
        ('connect', 0),
        ('connect', 1),
        ('consume', 1),
        ('connect', 2),
        ('consume', 2),
    ]
    assert 'CQRS consumer cannot connect to a:1 (ConnectionRefusedError); trying b:2.' in (
        caplog.text
    )
    assert 'lost the connection to b:2 (ConnectionResetError); reconnecting to c:3.' in (
        caplog.text
    )


def test_item_01_consume_loop_waits_after_a_whole_round_of_failures(caplog):
    stop = StopFlag()
    waits = []
    attempts = []

    def connect(index):
        attempts.append(index)
        if len(attempts) == 5:
            stop.set()
        raise ConnectionRefusedError

    stop.wait = lambda seconds: waits.append(seconds)
    consume_until_stopped(stop, connect, None, None, (OSError,), ['a:1', 'b:2'], 1, 4)
    assert attempts == [0, 1, 0, 1, 0]
    assert waits == [1, 2]
    assert 'cannot connect to a:1, b:2 (ConnectionRefusedError); retrying in 1 s.' in caplog.text


def test_item_01_consume_loop_with_one_node_logs_as_before(caplog):
    stop = StopFlag()

    def consume_on(connection):
        stop.set()
        raise ConnectionResetError

    consume_until_stopped(stop, lambda i: i, consume_on, lambda c: None, (OSError,), ['a:1'])
    assert 'CQRS consumer lost the connection to a:1 (ConnectionResetError); reconnecting.\n' in (
        caplog.text + '\n'
    )


# --- item 2: queue type -----------------------------------------------------------------------


def test_item_02_queue_type_defaults_to_classic_without_arguments():
    with override_settings(CQRS=_cqrs()):
        validate_settings()
        assert cqrs_settings.replica.queue_type == 'classic'
        assert replica_queue_arguments() is None
    with override_settings(CQRS=_cqrs(replica={'queue_type': None})):
        assert cqrs_settings.replica.queue_type == 'classic'


def test_item_02_quorum_queue_type_gives_the_x_queue_type_argument():
    with override_settings(CQRS=_cqrs(replica={'queue_type': 'quorum'})):
        validate_settings()
        assert replica_queue_arguments() == {'x-queue-type': 'quorum'}


@pytest.mark.parametrize('value', ['Quorum', 'stream', 'mirrored', 1, True])
def test_item_02_other_queue_types_are_rejected_naming_the_key(value):
    message = settings_error(_cqrs(replica={'queue_type': value}))
    assert message == (
        f"settings.CQRS['replica']['queue_type'] must be 'classic' or 'quorum', not {value!r}."
    )


def test_item_02_type_mismatch_error_names_queue_types_and_migration():
    text = (
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'orders' in vhost '/': "
        "received the value 'quorum' of type 'longstr' but current is none"
    )
    with override_settings(CQRS=_cqrs(replica={'queue_type': 'quorum'})):
        error = queue_type_error('orders', text)
    assert isinstance(error, CQRSConfigurationError)
    message = str(error)
    assert '\n' not in message
    assert message.startswith(
        "CQRS queue 'orders' exists as a classic queue, but "
        "settings.CQRS['replica']['queue_type'] is 'quorum'"
    )
    assert 'stop every consumer' in message
    assert 'rabbitmqctl delete_queue orders' in message

    reverse = (
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'orders' in vhost '/': "
        "received none but current is the value 'quorum' of type 'longstr'"
    )
    with override_settings(CQRS=_cqrs()):
        message = str(queue_type_error('orders', reverse))
    assert "exists as a quorum queue, but settings.CQRS['replica']['queue_type'] is 'classic'" in (
        message
    )
    other = "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'orders'"
    assert queue_type_error('orders', other) is None


def _exits_on_configuration_error(queue):
    import sys

    sys.exit(EXIT_CONFIGURATION_ERROR)


def test_item_02_supervisor_stops_when_a_worker_exits_on_a_configuration_error():
    import signal

    from django.core.management.base import CommandError

    def too_long(signum, frame):
        raise TimeoutError('the supervisor kept restarting the workers')

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    previous_alarm = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(60)
    try:
        with pytest.raises(CommandError, match='configuration error'):
            Supervisor(2, target=_exits_on_configuration_error).run()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous_alarm)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
