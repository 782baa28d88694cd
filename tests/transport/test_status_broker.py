"""Issue 12, item 1: ``cqrs_status`` against the real brokers, with known backlogs and dead
letters: RabbitMQ (pika and Kombu ``amqp://``, unacknowledged messages through the management
API) and Redis (Kombu: what it cannot count is unknown), each threshold's exit status, a broker
that is down, and the progress a running ``cqrs_consume`` writes."""

from __future__ import annotations

import json
from datetime import timezone as dt_timezone

import kombu
import pika
import pytest
from django.test import override_settings
from django.utils.dateparse import parse_datetime

from dj_cqrs import status
from dj_cqrs.transport import KombuTransport, RabbitMQTransport
from dj_cqrs.transport.kombu import _exchange
from tests.dj_master.models import SimplestModel
from tests.harness import (
    KOMBU,
    RABBIT,
    assert_replica_equals_master,
    call_exiting,
    clean_redis,
    wait_for,
    wire_body,
)

READY, DEAD = 5, 2


def fill_rabbitmq(url: str, names: dict) -> None:
    """READY messages for the replica queue and DEAD dead letters, through pika."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        RabbitMQTransport.declare_replica_topology(channel)
        channel.confirm_delivery()
        for pk in range(READY):
            channel.basic_publish(names['exchange'], 'simplest', json.dumps(wire_body(pk)))
        dead_key = f'cqrs.{names["dead_letter_queue"]}.simplest'
        for pk in range(DEAD):
            channel.basic_publish(names['exchange'], dead_key, json.dumps(wire_body(pk)))
    finally:
        connection.close()


def fill_kombu(url: str, names: dict) -> None:
    with kombu.Connection(url) as connection:
        channel = connection.channel()
        queue, dead = KombuTransport._queues(None)
        queue(channel).declare()
        dead(channel).declare()
        producer = kombu.Producer(channel, exchange=_exchange())
        for pk in range(READY):
            producer.publish(json.dumps(wire_body(pk)), routing_key='simplest')
        for pk in range(DEAD):
            producer.publish(
                json.dumps(wire_body(pk)), routing_key=f'cqrs.{names["dead_letter_queue"]}.simplest'
            )


class HeldMessage:
    """A consumer of the replica queue holding one message unacknowledged (prefetch 1)."""

    def __init__(self, url: str, queue: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = self.connection.channel()
        channel.basic_qos(prefetch_count=1)
        self.received = []
        channel.basic_consume(queue, lambda *args: self.received.append(args))
        wait_for(lambda: self.connection.process_data_events(0.1) or self.received)

    def close(self) -> None:
        self.connection.close()  # the message goes back to the queue


@pytest.mark.django_db(transaction=True, databases=['default', 'other'])
@pytest.mark.parametrize('transport', [RABBIT, KOMBU])
def test_item_01_rabbitmq_exact_figures_and_thresholds(master, amqp_url, names, transport):
    master(transport)
    fill_rabbitmq(amqp_url, names)
    held = HeldMessage(amqp_url, names['queue'])
    try:
        # The management API refreshes its figures every few seconds.
        found = wait_for(
            lambda: (s := status.collect('replica')).queues[0].unacknowledged == 1 and s,
            message='the management API to count the held message',
        )
        assert found.broker == ('' if transport == RABBIT else 'amqp://') + '127.0.0.1:5672//'
        assert found.broker_reachable and found.broker_error is None
        assert found.queues == [
            status.QueueStatus(names['queue'], READY - 1, 1, 1),
            status.QueueStatus(names['dead_letter_queue'], DEAD, 0, 0),
        ]
        assert found.dead_letters == DEAD

        limits = ('--max-ready', str(READY - 1), '--max-dead-letters', str(DEAD))
        assert call_exiting('cqrs_status', *limits)[0] == 0
        code, _out, err = call_exiting('cqrs_status', '--max-ready', str(READY - 2))
        assert (code, err) == (
            1,
            f'CQRS status: {READY - 1} ready message(s) in {names["queue"]}, '
            f'over --max-ready {READY - 2}\n',
        )
        code, _out, err = call_exiting('cqrs_status', '--max-dead-letters', str(DEAD - 1))
        assert (code, err) == (
            1,
            f'CQRS status: {DEAD} dead letter(s), over --max-dead-letters {DEAD - 1}\n',
        )
        code, out, _err = call_exiting('cqrs_status', '--json')
        assert json.loads(out)['queues'][0] == {
            'name': names['queue'],
            'ready': READY - 1,
            'unacknowledged': 1,
            'consumers': 1,
        }
    finally:
        held.close()


@pytest.mark.django_db(transaction=True, databases=['default', 'other'])
def test_item_01_rabbitmq_without_the_management_api_unacked_is_unknown(master, amqp_url, names):
    settings = master(RABBIT)
    fill_rabbitmq(amqp_url, names)
    with override_settings(CQRS={**settings, 'management_url': 'http://127.0.0.1:1'}):
        found = status.collect('replica')
        code, out, _err = call_exiting('cqrs_status')

    assert found.queues[0] == status.QueueStatus(names['queue'], READY, None, 0)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith(names['queue']))
    assert line.split() == [names['queue'], str(READY), 'unknown', '0']


@pytest.mark.django_db(transaction=True, databases=['default', 'other'])
def test_item_01_redis_ready_and_dead_letters_exact_the_rest_unknown(master, redis_url, names):
    master(KOMBU, redis_url)
    try:
        fill_kombu(redis_url, names)

        found = status.collect('replica')

        assert found.broker == 'redis://127.0.0.1:6379/0'
        assert found.queues == [
            status.QueueStatus(names['queue'], READY, None, None),
            status.QueueStatus(names['dead_letter_queue'], DEAD, None, None),
        ]
        assert found.dead_letters == DEAD
        limits = ('--max-ready', str(READY), '--max-dead-letters', str(DEAD))
        assert call_exiting('cqrs_status', *limits)[0] == 0
        assert call_exiting('cqrs_status', '--max-ready', str(READY - 1))[0] == 1
        assert call_exiting('cqrs_status', '--max-dead-letters', '0')[0] == 1
        code, out, _err = call_exiting('cqrs_status', '--json')
        assert json.loads(out)['queues'][1] == {
            'name': names['dead_letter_queue'],
            'ready': DEAD,
            'unacknowledged': None,
            'consumers': None,
        }
    finally:
        clean_redis(redis_url, names)


@pytest.mark.django_db(transaction=True, databases=['default', 'other'])
@pytest.mark.parametrize('transport', [RABBIT, KOMBU])
def test_item_01_an_undeclared_queue_is_empty(master, amqp_url, names, transport):
    master(transport)
    found = status.collect('replica')

    assert found.broker_reachable
    assert [(q.ready, q.unacknowledged, q.consumers) for q in found.queues] == [(0, 0, 0)] * 2


@pytest.mark.parametrize(
    'transport, url',
    [(RABBIT, 'amqp://guest:guest@127.0.0.1:1/%2F'), (KOMBU, 'redis://127.0.0.1:1/0')],
)
def test_item_01_broker_down_exit_2_with_a_one_line_reason_subprocess(
    replica_service, transport, url
):
    replica = replica_service(transport, url)

    result = replica.manage('cqrs_status', '--max-ready', '0', check=False)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith('CQRS status: broker 127.0.0.1:1') or lines[0].startswith(
        'CQRS status: broker redis://127.0.0.1:1/0'
    )
    assert 'unreachable: ' in lines[0] and 'Connection refused' in lines[0]
    assert 'UNREACHABLE' in result.stdout


def stored_newest(replica):
    rows = replica.query('SELECT last_master_updated FROM dj_cqrs_replica_status')
    if not rows:
        return None
    value = rows[0][0]
    value = parse_datetime(value) if isinstance(value, str) else value
    return value.replace(tzinfo=dt_timezone.utc) if value.tzinfo is None else value


@pytest.mark.parametrize('vendor', ['sqlite', 'postgresql'])
def test_item_01_consumer_writes_progress_and_the_command_exits_by_threshold(
    master, replica_service, names, vendor, transactional_db, amqp_url
):
    master(RABBIT)
    replica = replica_service(vendor=vendor).start()
    replica.wait_ready()
    for pk in range(1, 31):
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
    assert_replica_equals_master(replica)

    newest = max(SimplestModel.objects.values_list('cqrs_updated', flat=True))
    # A worker writes its progress at most once a second (replica_status.WRITE_INTERVAL).
    wait_for(
        lambda: stored_newest(replica) == newest, message='the newest change in the status table'
    )
    result = replica.manage('cqrs_status', '--json', '--max-lag', '3600', check=False)
    document = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    simplest = next(m for m in document['models'] if m['cqrs_id'] == 'simplest')
    assert simplest['last_applied'] is not None
    assert simplest['last_master_updated'] == newest.isoformat()
    assert 0 <= simplest['lag'] < 3600
    assert document['queues'][0]['consumers'] == 1
    assert replica.query('SELECT COUNT(*) FROM dj_cqrs_lag_sample')[0][0] >= 1

    # A replica with nothing waiting is not behind, whatever --max-lag says.
    assert replica.manage('cqrs_status', '--max-lag', '0', check=False).returncode == 0

    replica.stop()
    SimplestModel.objects.create(id=100, name='waiting')
    wait_for(lambda: status.collect('replica').queues[0].ready == 1)
    result = replica.manage('cqrs_status', '--max-lag', '0', check=False)
    assert result.returncode == 1
    assert result.stderr.startswith('CQRS status: lag of simplest is ')
    assert result.stderr.rstrip().endswith('with 1 message(s) waiting, over --max-lag 0')
