"""Issue 11, item 1: several brokers in ``CQRS['url']``, tried in order, failover on loss.

A dead node is a closed port on this machine. The live nodes are the shared broker
(``amqp_url``) and a private RabbitMQ node of this module (``private_node_broker``), which the
tests stop and start again; the shared broker is never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import pytest
import ujson
from django.core.management.base import CommandError
from django.test import override_settings

from dj_cqrs.models import CQRSOutboxMessage
from dj_cqrs.outbox import flush_published
from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import SimplestModel
from tests.harness import (
    KOMBU,
    RABBIT,
    Broker,
    assert_replica_equals_master,
    cqrs_settings_for,
    create_in_transactions,
    free_port,
    master_rows,
    outbox_on,
    private_node_broker,  # noqa: F401 (the ``broker`` fixture)
    run_command,
    settle_publisher,
    wait_for,
)
from tests.transport.private_broker import port_open

TRANSPORTS = pytest.mark.parametrize('transport', [RABBIT, KOMBU], ids=['rabbitmq', 'kombu'])


@pytest.fixture
def dead_url():
    """An AMQP URL with credentials whose port nothing listens on."""
    return f'amqp://ghost:s3cretpw@127.0.0.1:{free_port()}/%2F'


@pytest.fixture
def shared(amqp_url, names):
    """The shared broker, with the test's replica queue bound to 'simplest'."""
    result = Broker(amqp_url, names).bind_replica_queue('simplest')
    yield result
    result.close()


def _port(url: str) -> str:
    return url.rsplit(':', 1)[1].split('/')[0]


@TRANSPORTS
@pytest.mark.django_db(transaction=True)
def test_item_01_publisher_skips_a_dead_first_node(
    transport, master, shared, names, amqp_url, dead_url, caplog
):
    caplog.set_level(logging.INFO, 'django-cqrs')
    master(transport=transport, url=[dead_url, amqp_url])

    SimplestModel.objects.create(id=1, name='through the second node')
    settle_publisher()

    [(routing_key, _, body)] = shared.take(names['queue'], 1)
    assert (routing_key, body['instance_pk']) == ('simplest', 1)
    dead = f'127.0.0.1:{_port(dead_url)}'
    assert f'CQRS publisher cannot connect to {dead}/' in caplog.text
    assert 'CQRS publisher is connected to 127.0.0.1:5672/' in caplog.text
    assert 's3cretpw' not in caplog.text and 'ghost' not in caplog.text
    assert 's3cretpw' not in repr([r.args for r in caplog.records])


@pytest.mark.django_db(transaction=True)
def test_item_01_semicolon_string_is_a_list_of_nodes(master, shared, names, amqp_url, dead_url):
    master(url=f'{dead_url};{amqp_url}')
    SimplestModel.objects.create(id=1, name='one')
    settle_publisher()
    assert shared.take(names['queue'], 1)[0][2]['instance_pk'] == 1


@pytest.mark.django_db(transaction=True)
def test_item_01_every_node_dead_fails_the_publish_and_names_the_nodes(master, caplog):
    first, second = free_port(), free_port()
    master(url=[f'amqp://u:s3cretpw@127.0.0.1:{p}/%2F' for p in (first, second)])

    SimplestModel.objects.create(id=1, name='unpublished')

    assert f'broker 127.0.0.1:{first}//, 127.0.0.1:{second}//.' in caplog.text
    assert 's3cretpw' not in caplog.text


@TRANSPORTS
@pytest.mark.django_db(transaction=True)
def test_item_01_consumer_skips_a_dead_first_node(
    transport, master, replica_service, amqp_url, dead_url
):
    master(transport=transport)
    replica = replica_service(transport=transport, url=f'{dead_url};{amqp_url}').start()
    replica.wait_ready()

    SimplestModel.objects.create(id=1, name='one')
    SimplestModel.objects.create(id=2, name='two')

    assert_replica_equals_master(replica)
    log = replica.log()
    assert f'cannot connect to 127.0.0.1:{_port(dead_url)}/' in log
    assert 'CQRS consumer is ready: queue' in log and 'at 127.0.0.1:5672/' in log
    assert 's3cretpw' not in log and 'ghost' not in log


def publish_across(stop_node, before: int = 200, after: int = 100) -> int:
    """Create rows (each published on its own, every 5th also updates an earlier row) while
    ``stop_node`` runs in a thread, started after ``before`` rows; go on until it returned and
    ``after`` more rows were saved. Returns the number of rows."""
    stopper = threading.Thread(target=stop_node)
    pk, remaining = 0, None
    while remaining is None or remaining > 0:
        pk += 1
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
        if pk % 5 == 0:
            row = SimplestModel.objects.get(id=pk - 2)
            row.name = f'{row.name} updated'
            row.save()
        if pk == before:
            stopper.start()
        if remaining is not None:
            remaining -= 1
        elif pk > before and not stopper.is_alive():
            remaining = after
    stopper.join()
    return pk


@TRANSPORTS
@pytest.mark.django_db(transaction=True)
def test_item_01_failover_between_two_live_nodes_loses_nothing(
    transport, master, broker, names, amqp_url, replica_service
):
    """Publisher and consumer start on the private node; it is stopped while the master
    publishes with confirms: both move to the shared node. Messages the private node took
    before it stopped are consumed when it is back (a replica started again connects to the
    first node)."""
    urls = [broker.url, amqp_url]
    master(transport=transport, url=urls)
    replica = replica_service(transport=transport, url=';'.join(urls)).start()
    replica.wait_ready()
    assert f'at 127.0.0.1:{broker.port}/' in replica.log()
    shared = Broker(amqp_url, names).bind_replica_queue('simplest')
    try:
        before = RabbitMQTransport.connections_opened()
        rows = publish_across(broker.stop_app)
        settle_publisher(timeout=60)
        assert RabbitMQTransport._publisher.unconfirmed_count == 0
        if transport == RABBIT:
            assert RabbitMQTransport.connections_opened() > before

        wait_for(lambda: 'reconnecting to 127.0.0.1:5672/' in replica.log(), message='failover')
        wait_for(lambda: shared.count(names['queue']) == 0, message='the shared node drained')
        broker.start_app()
        replica.stop()
        replica.start()  # connects to the private node again and drains what it kept
        assert_replica_equals_master(replica)
        assert len(master_rows()) == rows
    finally:
        shared.close()


@pytest.mark.parametrize('outbox', [False, True], ids=['plain', 'outbox'])
@pytest.mark.django_db(transaction=True)
def test_item_01_unconfirmed_messages_are_published_again_on_the_next_node(
    outbox, master, broker, names, amqp_url, shared
):
    """The private node stops reading publishes (a memory alarm), so 20 messages stay
    unconfirmed; then it stops. ``flush()`` connects to the shared node and publishes them
    there; with the outbox on, their rows are deleted only then (on the new node's confirms)."""
    master(url=[broker.url, amqp_url])
    on_private = Broker(broker.url, names).bind_replica_queue('simplest')
    on_private.close()
    context = outbox_on() if outbox else contextlib.nullcontext()
    with context:
        create_in_transactions(list(range(1, 11)), 10)
        settle_publisher()
        assert RabbitMQTransport._publisher.node_location.startswith(f'127.0.0.1:{broker.port}/')
        broker.ctl('set_vm_memory_high_watermark', '0')
        try:
            create_in_transactions(list(range(11, 31)), 20)
            assert not RabbitMQTransport.flush(timeout=1), 'the alarm holds the confirms back'
            assert RabbitMQTransport._publisher.unconfirmed_count >= 19
            if outbox:
                flush_published()
                assert CQRSOutboxMessage.objects.count() >= 19
            broker.stop_app()
            assert RabbitMQTransport.flush(timeout=30)
            assert RabbitMQTransport._publisher.node_location.startswith('127.0.0.1:5672/')
            if outbox:
                flush_published()
                assert CQRSOutboxMessage.objects.count() == 0, 'deleted on the confirms'
        finally:
            if not port_open(broker.port):
                broker.start_app()
            broker.ctl('set_vm_memory_high_watermark', '0.4')

    on_private = Broker(broker.url, names)
    try:
        kept_by_private = {
            body['instance_pk'] for _, _, body in on_private.take(names['queue'], 10)
        }
        kept_by_private |= {
            body['instance_pk']
            for _, _, body in on_private.take(names['queue'], on_private.count(names['queue']))
        }
    finally:
        on_private.close()
    resent = {body['instance_pk'] for _, _, body in shared.take(names['queue'], 19)}
    resent |= {
        body['instance_pk']
        for _, _, body in shared.take(names['queue'], shared.count(names['queue']))
    }
    assert set(range(1, 11)) <= kept_by_private
    assert kept_by_private | resent == set(range(1, 31))
    assert len(resent) >= 19


def _dead_letter(pk: int) -> dict:
    return {
        'signal_type': 'SAVE', 'cqrs_id': 'simplest', 'instance_data': {'id': pk},
        'previous_data': None, 'instance_pk': pk, 'correlation_id': None, 'retries': 3,
        'expires': None, 'meta': None,
    }  # fmt: skip


@TRANSPORTS
def test_item_01_dead_letters_command_skips_a_dead_first_node(
    transport, shared, names, amqp_url, dead_url, caplog
):
    """``cqrs_dead_letters`` connects as the transports do: the dead first node of
    ``CQRS['url']`` is skipped (and logged without credentials), the second one serves
    ``dump``, ``retry`` and ``purge``, with the output of a single-node URL."""
    caplog.set_level(logging.INFO, 'django-cqrs')
    bodies = [ujson.dumps(_dead_letter(pk)) for pk in (1, 2)] + ['not json']
    dead_letter_queue = names['dead_letter_queue']
    with override_settings(CQRS=cqrs_settings_for(transport, f'{dead_url};{amqp_url}', names)):
        assert run_command('cqrs_dead_letters', 'purge') == ('Total dead letters: 0\n', '')
        for body in bodies:
            shared.channel.basic_publish('', dead_letter_queue, body.encode())

        dumped = ''.join(f'{body}\n' for body in bodies)
        assert run_command('cqrs_dead_letters', 'dump') == (dumped, '')
        retry, errors = run_command('cqrs_dead_letters', 'retry')
        assert retry == (
            'Total dead letters: 3\n'
            f'Retrying: 1/3\n{ujson.dumps({**_dead_letter(1), "retries": 0})}\n'
            f'Retrying: 2/3\n{ujson.dumps({**_dead_letter(2), "retries": 0})}\n'
            'Retrying: 3/3\n'
        )
        assert errors.startswith('Skipping a dead letter that is not a CQRS message: ')
        assert run_command('cqrs_dead_letters', 'purge') == ('Total dead letters: 1\nPurged\n', '')
        assert run_command('cqrs_dead_letters', 'dump') == ('', '')

    retried = shared.take(names['queue'], 2)
    assert [(key, body['instance_pk'], body['retries']) for key, _, body in retried] == [
        (f'cqrs.{names["queue"]}.simplest', 1, 0),
        (f'cqrs.{names["queue"]}.simplest', 2, 0),
    ]
    assert f'cannot connect to 127.0.0.1:{_port(dead_url)}/' in caplog.text
    assert 's3cretpw' not in caplog.text and 'ghost' not in caplog.text


@TRANSPORTS
def test_item_01_dead_letters_command_names_every_dead_node(transport, names):
    """No node answers: the command fails with the nodes it tried, without credentials."""
    first, second = free_port(), free_port()
    urls = [f'amqp://u:s3cretpw@127.0.0.1:{port}/%2F' for port in (first, second)]
    with (
        override_settings(CQRS=cqrs_settings_for(transport, ';'.join(urls), names)),
        pytest.raises(CommandError) as error,
    ):
        run_command('cqrs_dead_letters', 'dump')
    if transport == RABBIT:
        expected = (
            f'Cannot connect to RabbitMQ at 127.0.0.1:{first}//, 127.0.0.1:{second}//: '
            'AMQPConnectionError.'
        )
    else:
        expected = (
            f'Cannot connect to amqp://u:**@127.0.0.1:{first}//, '
            f'amqp://u:**@127.0.0.1:{second}//: OperationalError.'
        )
    assert str(error.value) == expected
