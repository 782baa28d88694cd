"""Security of the broker connection: TLS (amqps + ``ssl_options``), vhosts, no leaked passwords.

Both transports (``RabbitMQTransport``, ``KombuTransport``) against a private RabbitMQ node
(``tls_broker``) that listens for AMQP and, with certificates from a throw-away CA, for AMQPS.

The master is this pytest process. A replica is a ``cqrs_consume`` process
(``replica_service``) configured from the environment by ``tests.settings_broker``, which has
no ``ssl_options``: it connects over ``amqps://`` and trusts the test CA through OpenSSL's
``SSL_CERT_FILE`` (the broker does not require a client certificate). What the master sends is
also read back over TLS with pika directly.
"""

from __future__ import annotations

import json
import logging
import ssl
import traceback
import uuid

import pika
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from dj_cqrs.transport import RabbitMQTransport, current_transport
from tests.dj_master.models import SimplestModel
from tests.harness import (
    KOMBU,
    RABBIT,
    bodies_before_marker,
    cqrs_settings_for,
    reset_publisher,
    wait_for,
)
from tests.transport.private_broker import _free_port

pytestmark = pytest.mark.django_db(transaction=True)

TRANSPORTS = [pytest.param(RABBIT, id='rabbitmq'), pytest.param(KOMBU, id='kombu')]
PASSWORD = 's3cr3t-pw'
VHOST = 'cqrs_vhost'
SIMPLEST = 'dj_replica_simplestreplica'


# --- helpers ----------------------------------------------------------------------------------


def tls_url(broker, host='localhost', password='guest', vhost='%2F'):
    return f'amqps://guest:{password}@{host}:{broker.tls_port}/{vhost}'


def full_ssl_options(broker, **changes):
    certs = broker.certificates
    options = {
        'ca_certs': certs['ca'],
        'certfile': certs['client_cert'],
        'keyfile': certs['client_key'],
        'server_hostname': 'localhost',
    }
    options.update(changes)
    return {key: value for key, value in options.items() if value is not None}


class Probe:
    """A pika connection of the test itself (over TLS or not) with capture queues."""

    def __init__(self, broker, exchange, vhost='%2F', tls=True):
        if tls:
            certs = broker.certificates
            context = ssl.create_default_context(cafile=certs['ca'])
            context.load_cert_chain(certs['client_cert'], certs['client_key'])
            params = pika.URLParameters(tls_url(broker, vhost=vhost))
            params.ssl_options = pika.SSLOptions(context, 'localhost')
        else:
            params = pika.URLParameters(f'amqp://guest:guest@127.0.0.1:{broker.port}/{vhost}')
        self.exchange = exchange
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()
        self.channel.exchange_declare(exchange, 'topic', durable=True)

    def capture(self, name=None, routing_key='#'):
        name = name or f'capture_{uuid.uuid4().hex[:10]}'
        self.channel.queue_declare(name, auto_delete=False)
        self.channel.queue_bind(name, self.exchange, routing_key)
        return name

    def published_before_marker(self, queue):
        """What reached ``queue`` before a marker the probe publishes now (see conftest)."""
        return bodies_before_marker(self.channel, self.exchange, queue)

    def take(self, queue, timeout=30):
        """One message body (dict) from ``queue``, waiting for it."""
        got = []

        def collect():
            method, _properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is not None:
                got.append(json.loads(body))
            return got

        wait_for(collect, timeout, message=f'a message in {queue}')
        return got[0]

    def close(self):
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def probes(tls_broker, names):
    made = []

    def make(vhost='%2F', tls=True):
        probe = Probe(tls_broker, names['exchange'], vhost=vhost, tls=tls)
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


@pytest.fixture
def publisher(names):
    """Make this process a master publishing with ``transport`` to ``url`` (+ ``ssl_options``)."""
    reset_publisher()
    overrides = []

    def configure(transport, url, ssl_options=None):
        settings = cqrs_settings_for(transport, url, names)
        if ssl_options is not None:
            settings['ssl_options'] = ssl_options
        override = override_settings(CQRS=settings)
        override.enable()
        overrides.append(override)
        return settings

    yield configure
    if overrides:
        RabbitMQTransport.flush(timeout=5)
    reset_publisher()
    for override in reversed(overrides):
        override.disable()


@pytest.fixture(scope='module')
def vhost_broker(tls_broker):
    tls_broker.add_vhost(VHOST)
    return tls_broker


def flush(transport):
    if transport == RABBIT:
        assert RabbitMQTransport.flush(timeout=10)


def cqrs_errors(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == 'django-cqrs' and r.levelno >= logging.ERROR
    ]


def ssl_connections(broker):
    """``ssl`` flag of every client connection of the broker ('true' / 'false')."""
    lines = broker.ctl('list_connections', 'ssl', '--no-table-headers').splitlines()
    return [line.strip() for line in lines if line.strip() in ('true', 'false')]


# --- TLS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_tls_save_reaches_a_replica_service(
    tls_broker, names, replica_service, publisher, probes, transport
):
    url = tls_url(tls_broker)
    replica = replica_service(
        transport=transport, url=url, SSL_CERT_FILE=tls_broker.certificates['ca']
    )
    replica.start('-w', '1')
    replica.wait_ready()
    probe = probes()
    capture = probe.capture()
    publisher(transport, url, full_ssl_options(tls_broker))

    SimplestModel.objects.create(id=1, name='over tls')
    flush(transport)

    wait_for(
        lambda: replica.query(f'SELECT id, name FROM {SIMPLEST}') == [(1, 'over tls')],
        message=f'the replica row (log: {replica.log()[-2000:]})',
    )
    body = probe.take(capture)
    assert body['signal_type'] == 'SAVE'
    assert body['cqrs_id'] == 'simplest'
    assert body['instance_pk'] == 1
    assert body['instance_data']['name'] == 'over tls'
    # Nobody here uses the plain listener: master, replica and probe all speak TLS.
    flags = ssl_connections(tls_broker)
    assert len(flags) >= 3, flags
    assert set(flags) == {'true'}, flags


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_tls_without_the_ca_the_publish_fails_and_is_logged(
    tls_broker, publisher, probes, caplog, transport
):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    probe = probes()
    capture = probe.capture()
    publisher(transport, tls_url(tls_broker), full_ssl_options(tls_broker, ca_certs=None))

    SimplestModel.objects.create(id=1, name='untrusted broker')

    assert SimplestModel.objects.filter(id=1).exists()
    errors = cqrs_errors(caplog)
    assert len(errors) == 1, errors
    assert "couldn't be published" in errors[0]
    assert probe.published_before_marker(capture) == []


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_tls_server_hostname_must_match_the_certificate(
    tls_broker, publisher, probes, caplog, transport
):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    probe = probes()
    capture = probe.capture()
    options = full_ssl_options(tls_broker, server_hostname='not-the-broker.example')
    publisher(transport, tls_url(tls_broker), options)

    SimplestModel.objects.create(id=1, name='wrong host')

    assert len(cqrs_errors(caplog)) == 1
    assert probe.published_before_marker(capture) == []


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_tls_checks_the_url_host_when_no_server_hostname_is_given(
    tls_broker, publisher, probes, caplog, transport
):
    """127.0.0.2 reaches the broker but is not in its certificate (localhost, 127.0.0.1)."""
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    probe = probes()
    capture = probe.capture()
    options = full_ssl_options(tls_broker, server_hostname=None)
    publisher(transport, tls_url(tls_broker, host='127.0.0.2'), options)

    SimplestModel.objects.create(id=1, name='host not in the certificate')
    flush(transport)

    assert len(cqrs_errors(caplog)) == 1, 'published to a broker whose certificate is not for it'
    assert probe.published_before_marker(capture) == []


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_tls_url_host_in_the_certificate_is_accepted(tls_broker, publisher, probes, transport):
    probe = probes()
    capture = probe.capture()
    options = full_ssl_options(tls_broker, server_hostname=None)
    publisher(transport, tls_url(tls_broker, host='127.0.0.1'), options)

    SimplestModel.objects.create(id=1, name='by ip')
    flush(transport)

    assert probe.take(capture)['instance_data']['name'] == 'by ip'


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_tls_check_hostname_false_accepts_another_name(
    tls_broker, publisher, probes, caplog, transport
):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    probe = probes()
    capture = probe.capture()
    options = full_ssl_options(
        tls_broker, server_hostname='not-the-broker.example', check_hostname=False
    )
    publisher(transport, tls_url(tls_broker), options)

    SimplestModel.objects.create(id=1, name='no hostname check')
    flush(transport)

    assert cqrs_errors(caplog) == []
    assert probe.take(capture)['instance_data']['name'] == 'no hostname check'


# --- vhost --------------------------------------------------------------------------------------


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_vhost_of_the_url_is_used(vhost_broker, names, publisher, probes, transport):
    in_vhost = probes(vhost=VHOST, tls=False)
    in_root = probes(tls=False)
    queue = f'vhost_probe_{uuid.uuid4().hex[:8]}'
    in_vhost.capture(queue)
    in_root.capture(queue)
    publisher(transport, f'amqp://guest:guest@127.0.0.1:{vhost_broker.port}/{VHOST}')

    SimplestModel.objects.create(id=1, name='in the vhost')
    flush(transport)

    assert in_vhost.take(queue)['instance_data']['name'] == 'in the vhost'
    assert in_root.published_before_marker(queue) == []


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_vhost_over_tls(vhost_broker, names, publisher, probes, transport):
    in_vhost = probes(vhost=VHOST)
    in_root = probes()
    queue = f'vhost_probe_{uuid.uuid4().hex[:8]}'
    in_vhost.capture(queue)
    in_root.capture(queue)
    publisher(transport, tls_url(vhost_broker, vhost=VHOST), full_ssl_options(vhost_broker))

    SimplestModel.objects.create(id=1, name='tls vhost')
    flush(transport)

    assert in_vhost.take(queue)['instance_data']['name'] == 'tls vhost'
    assert in_root.published_before_marker(queue) == []


# --- passwords never leak -----------------------------------------------------------------------


def password_urls(broker):
    return {
        'closed-port': f'amqp://guest:{PASSWORD}@127.0.0.1:{_free_port()}/%2F',
        'wrong-password': f'amqp://guest:{PASSWORD}@127.0.0.1:{broker.port}/%2F',
        'wrong-password-tls': tls_url(broker, password=PASSWORD),
    }


def assert_no_password_in(exc):
    text = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert PASSWORD not in str(exc)
    assert PASSWORD not in repr(exc)
    assert PASSWORD not in text


@pytest.mark.parametrize('target', ['closed-port', 'wrong-password', 'wrong-password-tls'])
@pytest.mark.parametrize('transport', TRANSPORTS)
def test_password_never_appears_in_logs_or_errors(tls_broker, publisher, caplog, transport, target):
    caplog.set_level(logging.DEBUG)
    url = password_urls(tls_broker)[target]
    publisher(transport, url, full_ssl_options(tls_broker) if url.startswith('amqps') else None)

    SimplestModel.objects.create(id=1, name='not published')

    assert SimplestModel.objects.filter(id=1).exists()
    errors = cqrs_errors(caplog)
    assert len(errors) == 1, errors
    assert "couldn't be published" in errors[0]
    assert PASSWORD not in caplog.text
    for record in caplog.records:
        assert PASSWORD not in repr(record.args)
        if record.exc_info:
            assert PASSWORD not in ''.join(traceback.format_exception(*record.exc_info))
    assert PASSWORD not in repr(current_transport)
    assert PASSWORD not in str(current_transport)

    with pytest.raises(CommandError) as error:
        call_command('cqrs_dead_letters', 'dump')
    assert_no_password_in(error.value)
    if transport == RABBIT:
        assert 'Cannot connect' in str(error.value)
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_replica_service_never_logs_the_password(tls_broker, replica_service, transport):
    url = f'amqp://guest:{PASSWORD}@127.0.0.1:{tls_broker.port}/%2F'
    replica = replica_service(transport=transport, url=url)
    replica.start('-w', '1')

    wait_for(
        lambda: 'cannot connect' in replica.log(),
        message=f'a connection error in the replica log ({replica.log()[-2000:]})',
    )
    replica.stop()

    log = replica.log()
    assert f'127.0.0.1:{tls_broker.port}' in log
    assert PASSWORD not in log
    dead_letters = replica.manage('cqrs_dead_letters', 'dump', check=False)
    assert dead_letters.returncode != 0
    assert PASSWORD not in dead_letters.stdout + dead_letters.stderr
