"""Issue 11, item 2: ``CQRS['replica']['queue_type'] = 'quorum'`` on the installed RabbitMQ.

The replica and dead-letter queues are declared as quorum queues (``x-queue-type``) with the
same bindings and the same retry / TTL / dead-letter behaviour; a queue that exists with the
other type stops the worker with a one-line error saying how to migrate.
"""

from __future__ import annotations

import subprocess

import pika
import pytest
from django.test import override_settings
from pika.exceptions import ChannelClosedByBroker

from dj_cqrs.conf import CQRSConfigurationError
from dj_cqrs.transport import KombuTransport, RabbitMQTransport
from tests.dj_master.models import FlakyModel, SimplestModel
from tests.harness import (
    KOMBU,
    RABBIT,
    assert_replica_equals_master,
    cqrs_settings_for,
    wait_for,
)

TRANSPORTS = pytest.mark.parametrize('transport', [RABBIT, KOMBU], ids=['rabbitmq', 'kombu'])
QUORUM = "CQRS['replica']['queue_type'] = 'quorum'"


def is_quorum(channel_of, queue: str) -> bool:
    """Whether ``queue`` exists as a quorum queue: declaring it with that type is accepted."""
    channel = channel_of()
    try:
        channel.queue_declare(queue, durable=True, arguments={'x-queue-type': 'quorum'})
    except ChannelClosedByBroker as exc:
        assert exc.reply_code == 406, exc
        return False
    channel.close()
    return True


@pytest.fixture
def channel_of(broker):
    """A fresh channel on the shared broker (a refused declaration closes its channel)."""
    return broker.connection.channel


def queue_types(*queues: str) -> dict[str, str]:
    """``rabbitmqctl list_queues name type`` of the shared node, for ``queues``."""
    output = subprocess.run(
        ['rabbitmqctl', '-q', 'list_queues', 'name', 'type'],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = dict(line.split('\t')[:2] for line in output.splitlines() if '\t' in line)
    return {queue: rows.get(queue) for queue in queues}


def _rabbitmqctl_works() -> bool:
    try:
        subprocess.run(['rabbitmqctl', '-q', 'status'], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@TRANSPORTS
@pytest.mark.django_db(transaction=True)
def test_item_02_quorum_queues_consume_retry_and_dead_letter(
    transport, master, names, broker, channel_of, replica_service
):
    master(transport=transport)
    replica = replica_service(transport=transport).extend_settings(QUORUM).start()
    replica.wait_ready()
    queue, dead = names['queue'], names['dead_letter_queue']
    assert is_quorum(channel_of, queue) and is_quorum(channel_of, dead)
    if _rabbitmqctl_works():
        assert queue_types(queue, dead) == {queue: 'quorum', dead: 'quorum'}

    for pk in range(1, 21):
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
    FlakyModel.objects.create(id=1, name='retried once', fail_times=1)
    FlakyModel.objects.create(id=2, name='never applies', always_fail=True)

    assert_replica_equals_master(replica)
    wait_for(lambda: replica.count('dj_replica_flakyreplica') == 1, message='the retried row')
    wait_for(lambda: broker.count(dead) == 1, message='the dead letter')
    attempts = dict(replica.query('SELECT id, attempts FROM dj_replica_flakyattempt'))
    assert attempts == {1: 2, 2: 4}, 'one retry; CQRS_MAX_RETRIES = 3 retries then dead'
    [(routing_key, properties, body)] = broker.take(dead, 1)
    assert routing_key == f'cqrs.{dead}.flaky'
    assert body['instance_pk'] == 2 and body['retries'] == 3
    assert properties.expiration == '864000000'  # dead_message_ttl (10 days) in ms
    assert replica.stop() == 0


@pytest.mark.django_db(transaction=True)
def test_item_02_dead_letters_expire_on_a_quorum_queue(master, names, broker, replica_service):
    """Per-message TTL (the ``expiration`` of dead letters) works on quorum queues."""
    master()
    replica = replica_service().extend_settings(
        f"{QUORUM}\nCQRS['replica']['dead_message_ttl'] = 2"
    )
    replica.start().wait_ready()
    FlakyModel.objects.create(id=1, name='never applies', always_fail=True)

    wait_for(
        lambda: 'CQRS is added to dead letter queue: pk = 1 (flaky)' in replica.log(),
        message='the dead letter',
    )
    wait_for(lambda: broker.count(names['dead_letter_queue']) == 0, message='its expiry')
    assert is_quorum(broker.connection.channel, names['dead_letter_queue'])


def test_item_02_installed_rabbitmq_expires_messages_on_quorum_queues(amqp_url, names):
    """The minimum version claim of docs/transports.md, checked on this broker: per-message
    TTL (``expiration``) and ``x-message-ttl`` both expire messages of quorum queues."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    per_message, per_queue = names['queue'], names['dead_letter_queue']
    try:
        channel.queue_declare(per_message, durable=True, arguments={'x-queue-type': 'quorum'})
        channel.queue_declare(
            per_queue, durable=True, arguments={'x-queue-type': 'quorum', 'x-message-ttl': 200}
        )
        short = pika.BasicProperties(expiration='200')
        channel.basic_publish('', per_message, b'short', short)
        channel.basic_publish('', per_message, b'kept', pika.BasicProperties())
        channel.basic_publish('', per_queue, b'short', pika.BasicProperties())

        def count(queue):
            return channel.queue_declare(queue, passive=True).method.message_count

        wait_for(lambda: count(per_message) == 1, message='the short message to expire')
        wait_for(lambda: count(per_queue) == 0, message='x-message-ttl to expire')
        method, _, body = channel.basic_get(per_message, auto_ack=True)
        assert body == b'kept'
        version = subprocess.run(
            ['rabbitmqctl', 'version'], capture_output=True, text=True, timeout=60
        ).stdout.strip()
        print(f'RabbitMQ {version}: message TTL works on quorum queues')
    finally:
        connection.close()


@TRANSPORTS
@pytest.mark.parametrize(('existing', 'requested'), [('classic', 'quorum'), ('quorum', 'classic')])
def test_item_02_queue_of_the_other_type_is_a_clear_configuration_error(
    transport, existing, requested, names, amqp_url, broker
):
    arguments = {'x-queue-type': 'quorum'} if existing == 'quorum' else None
    broker.channel.queue_declare(names['queue'], durable=True, arguments=arguments)
    settings = cqrs_settings_for(transport, amqp_url, names, queue_type=requested)
    with override_settings(CQRS=settings), pytest.raises(CQRSConfigurationError) as excinfo:
        if transport == RABBIT:
            channel = broker.connection.channel()
            RabbitMQTransport.declare_replica_topology(channel)
        else:
            import kombu

            with kombu.Connection(amqp_url) as connection:
                queue, _ = KombuTransport._queues(None)
                KombuTransport._declare(queue, connection.channel())
    message = str(excinfo.value)
    assert message.startswith(
        f"CQRS queue '{names['queue']}' exists as a {existing} queue, but "
        f"settings.CQRS['replica']['queue_type'] is '{requested}'"
    )
    assert f'rabbitmqctl delete_queue {names["queue"]}' in message
    assert '\n' not in message


@TRANSPORTS
@pytest.mark.django_db(transaction=True)
def test_item_02_worker_exits_on_a_queue_type_mismatch(transport, names, broker, replica_service):
    broker.channel.queue_declare(names['queue'], durable=True)  # classic, as before
    replica = replica_service(transport=transport).extend_settings(QUORUM).start('-w', '2')
    try:
        code = replica.process.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f'the consumer kept running:\n{replica.log()[-3000:]}')
    log = replica.log()
    assert code == 1, log[-3000:]
    assert (
        f"CQRS consumer stopped: CQRS queue '{names['queue']}' exists as a classic queue, but "
        "settings.CQRS['replica']['queue_type'] is 'quorum'"
    ) in log
    assert 'stopped on a configuration error; stopping.' in log
    assert 'starting it again' not in log
    assert 'CQRS consumer lost the connection' not in log
