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

import logging
import ssl
import traceback
import uuid

import pika
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from dj_cqrs.transport import RabbitMQTransport, current_transport
from tests.dj_master.models import SimplestModel
from tests.harness import KOMBU, RABBIT, Broker, free_port, wait_for

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


@pytest.fixture
def probes(tls_broker, names):
    """Factory of the test's own pika connections to the TLS node (``Broker``), over TLS with
    the client certificate or, with ``tls=False``, on the plain listener; closed at the end."""
    made = []

    def make(vhost='%2F', tls=True):
        if tls:
            certs = tls_broker.certificates
            context = ssl.create_default_context(cafile=certs['ca'])
            context.load_cert_chain(certs['client_cert'], certs['client_key'])
            probe = Broker(
                tls_url(tls_broker, vhost=vhost), names, pika.SSLOptions(context, 'localhost')
            )
        else:
            probe = Broker(f'amqp://guest:guest@127.0.0.1:{tls_broker.port}/{vhost}', names)
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


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
    tls_broker, names, replica_service, master, probes, transport
):
    url = tls_url(tls_broker)
    replica = replica_service(
        transport=transport, url=url, SSL_CERT_FILE=tls_broker.certificates['ca']
    )
    replica.start('-w', '1')
    replica.wait_ready()
    probe = probes()
    capture = probe.capture()
    master(transport, url, full_ssl_options(tls_broker))

    SimplestModel.objects.create(id=1, name='over tls')
    flush(transport)

    wait_for(
        lambda: replica.query(f'SELECT id, name FROM {SIMPLEST}') == [(1, 'over tls')],
        message=f'the replica row (log: {replica.log()[-2000:]})',
    )
    [(_key, _properties, body)] = probe.take(capture, 1)
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
    tls_broker, master, probes, caplog, transport
):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    probe = probes()
    capture = probe.capture()
    master(transport, tls_url(tls_broker), full_ssl_options(tls_broker, ca_certs=None))

    SimplestModel.objects.create(id=1, name='untrusted broker')

    assert SimplestModel.objects.filter(id=1).exists()
    errors = cqrs_errors(caplog)
    assert len(errors) == 1, errors
    assert "couldn't be published" in errors[0]
    assert probe.published_before_marker(capture) == []


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_tls_server_hostname_must_match_the_certificate(
    tls_broker, master, probes, caplog, transport
):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    probe = probes()
    capture = probe.capture()
    options = full_ssl_options(tls_broker, server_hostname='not-the-broker.example')
    master(transport, tls_url(tls_broker), options)

    SimplestModel.objects.create(id=1, name='wrong host')

    assert len(cqrs_errors(caplog)) == 1
    assert probe.published_before_marker(capture) == []


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_tls_checks_the_url_host_when_no_server_hostname_is_given(
    tls_broker, master, probes, caplog, transport
):
    """127.0.0.2 reaches the broker but is not in its certificate (localhost, 127.0.0.1)."""
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    probe = probes()
    capture = probe.capture()
    options = full_ssl_options(tls_broker, server_hostname=None)
    master(transport, tls_url(tls_broker, host='127.0.0.2'), options)

    SimplestModel.objects.create(id=1, name='host not in the certificate')
    flush(transport)

    assert len(cqrs_errors(caplog)) == 1, 'published to a broker whose certificate is not for it'
    assert probe.published_before_marker(capture) == []


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_tls_url_host_in_the_certificate_is_accepted(tls_broker, master, probes, transport):
    probe = probes()
    capture = probe.capture()
    options = full_ssl_options(tls_broker, server_hostname=None)
    master(transport, tls_url(tls_broker, host='127.0.0.1'), options)

    SimplestModel.objects.create(id=1, name='by ip')
    flush(transport)

    assert probe.take(capture, 1)[0][2]['instance_data']['name'] == 'by ip'


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_tls_check_hostname_false_accepts_another_name(
    tls_broker, master, probes, caplog, transport
):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    probe = probes()
    capture = probe.capture()
    options = full_ssl_options(
        tls_broker, server_hostname='not-the-broker.example', check_hostname=False
    )
    master(transport, tls_url(tls_broker), options)

    SimplestModel.objects.create(id=1, name='no hostname check')
    flush(transport)

    assert cqrs_errors(caplog) == []
    assert probe.take(capture, 1)[0][2]['instance_data']['name'] == 'no hostname check'


# --- vhost --------------------------------------------------------------------------------------


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_vhost_of_the_url_is_used(vhost_broker, names, master, probes, transport):
    in_vhost = probes(vhost=VHOST, tls=False)
    in_root = probes(tls=False)
    queue = f'vhost_probe_{uuid.uuid4().hex[:8]}'
    in_vhost.capture(name=queue)
    in_root.capture(name=queue)
    master(transport, f'amqp://guest:guest@127.0.0.1:{vhost_broker.port}/{VHOST}')

    SimplestModel.objects.create(id=1, name='in the vhost')
    flush(transport)

    assert in_vhost.take(queue, 1)[0][2]['instance_data']['name'] == 'in the vhost'
    assert in_root.published_before_marker(queue) == []


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_vhost_over_tls(vhost_broker, names, master, probes, transport):
    in_vhost = probes(vhost=VHOST)
    in_root = probes()
    queue = f'vhost_probe_{uuid.uuid4().hex[:8]}'
    in_vhost.capture(name=queue)
    in_root.capture(name=queue)
    master(transport, tls_url(vhost_broker, vhost=VHOST), full_ssl_options(vhost_broker))

    SimplestModel.objects.create(id=1, name='tls vhost')
    flush(transport)

    assert in_vhost.take(queue, 1)[0][2]['instance_data']['name'] == 'tls vhost'
    assert in_root.published_before_marker(queue) == []


# --- passwords never leak -----------------------------------------------------------------------


def password_urls(broker):
    return {
        'closed-port': f'amqp://guest:{PASSWORD}@127.0.0.1:{free_port()}/%2F',
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
def test_password_never_appears_in_logs_or_errors(tls_broker, master, caplog, transport, target):
    caplog.set_level(logging.DEBUG)
    url = password_urls(tls_broker)[target]
    master(transport, url, full_ssl_options(tls_broker) if url.startswith('amqps') else None)

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
