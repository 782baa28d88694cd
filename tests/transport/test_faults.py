"""Fault injection against real processes and real RabbitMQ nodes (SPEC §3, §6, the outbox).

The master is this pytest process (``master`` fixture); replicas are ``cqrs_consume``
processes with an SQLite file or a PostgreSQL database of their own (``replica_service``; the
tests whose outcome depends on the replica database run on both). Faults: the broker is
stopped (``private_broker.stop_app()``, the port closes) while the master writes or while a
worker consumes, a worker is SIGKILLed in the middle of a stream, and hand-made poison
messages are fed to a worker. A lock on the replica table (``write_lock``) holds the worker
back, so that a fault hits it in the middle of a batch whatever the speed of the machine.
Every test ends by comparing the master table and the replica table row for row:
``(id, cqrs_revision)``, and with exact counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterable

import pika
import pytest
from django.db.models import Max

from dj_cqrs.models import CQRSOutboxMessage
from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import SimplestModel
from tests.harness import (
    RECONNECT,
    SIMPLEST,
    applied_simplest,
    assert_replica_equals_master,
    create_in_transactions,
    master_rows,
    outbox_on,
    private_node_broker,  # noqa: F401 (the ``broker`` fixture)
    queue_depth,
    received_pks,
    relay_outbox,
    replica_rows,
    wait_for,
    wire_body,
    worker_pids,
    write_lock,
)

# --- helpers ----------------------------------------------------------------------------------


def save_changes(ids: Iterable[int], update_every: int = 0) -> tuple[int, float]:
    """Create a row per id; after every ``update_every`` creates also update an earlier row.

    Returns the number of saves and the slowest save in seconds. Every save runs outside a
    transaction, so its message is published (or fails to be) at once.
    """
    created: list[int] = []
    saves, slowest = 0, 0.0
    for pk in ids:
        started = time.monotonic()
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
        slowest = max(slowest, time.monotonic() - started)
        saves += 1
        created.append(pk)
        if update_every and len(created) % update_every == 0:
            row = SimplestModel.objects.get(id=created[len(created) // 2])
            row.name = f'{row.name} updated'
            started = time.monotonic()
            row.save()
            slowest = max(slowest, time.monotonic() - started)
            saves += 1
    return saves, slowest


VENDORS = pytest.mark.parametrize('vendor', ['sqlite', 'postgresql'])


# --- 1 & 2: the broker is down while the master writes ---------------------------------------


@VENDORS
@pytest.mark.django_db(transaction=True)
def test_outbox_keeps_every_change_made_while_the_broker_is_down(
    vendor, master, broker, replica_service
):
    master(url=broker.url)
    replica = replica_service(url=broker.url, vendor=vendor).start('-w', '1')
    replica.wait_ready()

    with outbox_on():
        broker.stop_app()
        try:
            saves, slowest = save_changes(range(1, 801), update_every=4)
        finally:
            broker.start_app()
        print(f'{saves} saves with the broker down, slowest {slowest:.3f} s')
        assert saves == 1000
        assert SimplestModel.objects.count() == 800
        assert CQRSOutboxMessage.objects.count() == 1000, 'every change has its outbox row'

        print(relay_outbox())
        assert_replica_equals_master(replica)
        assert CQRSOutboxMessage.objects.count() == 0

    log = replica.log()
    assert RECONNECT.search(log), log[-3000:]
    assert 'exited with code' not in log, log[-3000:]
    assert replica.process.poll() is None


@VENDORS
@pytest.mark.django_db(transaction=True)
def test_without_outbox_changes_made_while_the_broker_is_down_are_lost(
    vendor, master, names, broker, replica_service
):
    master(url=broker.url)
    replica = replica_service(url=broker.url, vendor=vendor).start('-w', '1')
    replica.wait_ready()
    save_changes(range(1, 11))
    assert_replica_equals_master(replica)

    broker.stop_app()
    try:
        saves, slowest = save_changes(range(11, 811), update_every=4)
    finally:
        broker.start_app()
    print(f'{saves} saves with the broker down, slowest {slowest:.3f} s')
    assert saves == 1000

    # Rows written after the restart reach the replica: the consumer is back. They are the
    # last messages of the queue: once they are applied and the consumer has stopped with
    # nothing left in the queue, every message that reached the broker has been applied.
    save_changes(range(100_001, 100_011))
    assert RabbitMQTransport.flush(), 'what was published after the restart is confirmed'
    wait_for(
        lambda: replica.query(f'SELECT COUNT(*) FROM {SIMPLEST} WHERE id > 100000')[0][0] == 10,
        90,
        interval=0.2,
        message='rows saved after the restart on the replica',
    )
    assert replica.stop() == 0
    assert queue_depth(broker.url, names['queue']) == 0
    assert queue_depth(broker.url, names['dead_letter_queue']) == 0
    replica_count = replica.count()
    master_count = SimplestModel.objects.count()
    missing = sorted(set(master_rows()) - set(replica_rows(replica)))
    print(f'without the outbox: master {master_count} rows, replica {replica_count}')
    assert CQRSOutboxMessage.objects.count() == 0, 'the outbox is off: nothing to relay'
    assert replica_count < master_count
    assert missing and all(10 < pk <= 810 for pk, _ in missing), missing[:20]
    assert set(master_rows()) - set(missing) == set(replica_rows(replica))


# --- 3: a worker is SIGKILLed in the middle of a stream --------------------------------------


@VENDORS
@pytest.mark.django_db(transaction=True)
def test_sigkilled_worker_loses_nothing(vendor, master, replica_service):
    total = 1500
    master()
    replica = replica_service(vendor=vendor).start('-w', '1')
    replica.wait_ready()
    (victim,) = wait_for(lambda: worker_pids(replica), 10, message='the worker pid')

    # Ten rows applied. Then, with the worker frozen (SIGSTOP), the rest is queued; it resumes
    # against a locked replica table (a slow database), so it is killed while it holds
    # received, unapplied, unacknowledged messages, whatever the speed of the machine.
    create_in_transactions(list(range(1, 11)), 1)
    wait_for(lambda: replica.count() == 10, 30, message='the first ten rows applied')
    # ... and written as the worker's progress (``dj_cqrs.replica_status``): otherwise, on
    # SQLite, the worker may resume with that write, which waits for the lock (whole database)
    # before it takes any message.
    newest = SimplestModel.objects.aggregate(newest=Max('cqrs_updated'))['newest']
    wait_for(
        lambda: replica.recorded_master_updated() == newest, 30, message='the progress written'
    )
    os.kill(victim, signal.SIGSTOP)
    try:
        create_in_transactions(list(range(11, total + 1)), 5)
        assert RabbitMQTransport.flush(timeout=60)
        with write_lock(replica):
            os.kill(victim, signal.SIGCONT)
            wait_for(
                lambda: any(pk > 10 for pk in received_pks(replica.log(), victim)),
                30,
                message='the worker applying messages of the rest of the stream',
            )
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: 'exited with code' in replica.log(), 30, message='the supervisor')
            killed_at = replica.count()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
    assert killed_at == 10
    print(f'worker {victim} SIGKILLed with {killed_at} of {total} rows on the replica')

    replica.wait_ready(workers=2, timeout=60)
    assert_replica_equals_master(replica, timeout=120)
    new_workers = worker_pids(replica)
    assert len(new_workers) == 1 and victim not in new_workers, new_workers
    assert replica.stop() == 0
    counts = applied_simplest(replica)
    assert set(counts) == set(range(1, total + 1))
    # Only what the killed worker held comes again, and is applied without a second write.
    held = set(received_pks(replica.log(), victim)) - set(range(1, 11))
    assert {pk for pk, count in counts.items() if count > 1} <= held
    assert replica.count() == total


# --- 4: RabbitMQ restarts while a worker consumes --------------------------------------------


@VENDORS
@pytest.mark.django_db(transaction=True)
def test_worker_reconnects_after_a_broker_restart(vendor, master, names, broker, replica_service):
    master(url=broker.url)
    # A delay queue of 100: the worker takes 101 messages at a time (its prefetch).
    replica = replica_service(url=broker.url, vendor=vendor, CQRS_TEST_DELAY_QUEUE=100)
    replica.start('-w', '1').wait_ready()
    (worker,) = wait_for(lambda: worker_pids(replica), 10, message='the worker pid')

    # Ten rows applied; then the replica table is locked (a slow database) while the rest is
    # published: the worker stops in the middle of a batch, its deliveries unacknowledged,
    # when the broker goes away.
    create_in_transactions(list(range(1, 11)), 1)
    wait_for(lambda: replica.count() == 10, 30, message='the first ten rows applied')
    with write_lock(replica):
        create_in_transactions(list(range(11, 511)), 2)
        assert RabbitMQTransport.flush(timeout=30)
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        try:
            wait_for(
                lambda: queue_depth(connection.channel(), names['queue']) == 500 - 101,
                30,
                message='the worker holding its prefetch',
            )
        finally:
            connection.close()
        locked_at = replica.count()
        broker.stop_app()
    assert locked_at == 10
    try:
        wait_for(lambda: RECONNECT.search(replica.log()), 30, message='the worker losing it')
        at_restart = replica.count()
    finally:
        broker.start_app()
    print(
        f'broker stopped with {locked_at} of 510 rows applied and the worker stuck in a '
        f'batch; {at_restart} rows when restarted'
    )

    create_in_transactions(list(range(511, 1011)), 2)
    assert_replica_equals_master(replica, timeout=120)
    assert RabbitMQTransport.flush()

    log = replica.log()
    assert 'exited with code' not in log, log[-3000:]
    assert worker_pids(replica) == [worker], 'the same worker reconnected by itself'
    assert log.count('CQRS consumer is ready') >= 2, log[-3000:]
    assert replica.stop() == 0
    assert set(applied_simplest(replica)) == set(range(1, 1011))
    assert replica.count() == 1010
    assert queue_depth(broker.url, names['queue']) == 0
    assert queue_depth(broker.url, names['dead_letter_queue']) == 0


# --- 5: poison messages ----------------------------------------------------------------------

UPDATED = '2024-01-01T00:00:00+00:00'


def _message(pk: int, **changes) -> bytes:
    """A well-formed SAVE of SimplestReplica ``pk`` with ``changes`` (``None`` drops a key)."""
    body = wire_body(pk, instance_data=_data(pk), correlation_id=f'poison-{pk}')
    for key, value in changes.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body).encode()


def _data(pk: int, **changes) -> dict:
    data = {'id': pk, 'name': 'poison', 'cqrs_revision': 0, 'cqrs_updated': UPDATED}
    data.update(changes)
    return data


REJECTED, DEAD, APPLIED = 'rejected', 'dead-lettered', 'applied'
OUTCOMES = {
    REJECTED: re.compile(r"CQRS couldn't (be parsed|proceed)"),
    DEAD: re.compile(r'CQRS is added to dead letter queue'),
    APPLIED: re.compile(r'CQRS is applied: pk = 90'),
}
ANY_OUTCOME = re.compile('|'.join(f'(?:{regex.pattern})' for regex in OUTCOMES.values()))

POISON = [
    # (kind, routing key, body, what the worker must do with it)
    ('not JSON', 'simplest', b'{"signal_type": "SAVE", "cqrs_id": ', REJECTED),
    ('empty body', 'simplest', b'', REJECTED),
    ('JSON list', 'simplest', b'[1, 2, 3]', REJECTED),
    ('JSON string', 'simplest', b'"SAVE simplest 1"', REJECTED),
    ('JSON number', 'simplest', b'42', REJECTED),
    ('JSON null', 'simplest', b'null', REJECTED),
    ('missing instance_pk', 'simplest', _message(9001, instance_pk=None), REJECTED),
    ('missing signal_type', 'simplest', _message(9002, signal_type=None), REJECTED),
    ('missing cqrs_id', 'simplest', _message(9003, cqrs_id=None), REJECTED),
    ('missing instance_data', 'simplest', _message(9004, instance_data=None), REJECTED),
    ('cqrs_id is an int', 'simplest', _message(9005, cqrs_id=7), REJECTED),
    ('signal_type is a list', 'simplest', _message(9006, signal_type=['SAVE']), REJECTED),
    ('retries is a string', 'simplest', _message(9007, retries='3'), REJECTED),
    ('retries is a bool', 'simplest', _message(9008, retries=True), REJECTED),
    (
        'expires is an impossible date',
        'simplest',
        _message(9009, expires='2024-13-45T99:00:00'),
        REJECTED,
    ),
    ('unknown signal type', 'simplest', _message(9010, signal_type='EXPLODE'), DEAD),
    ('unknown CQRS_ID', 'nope', _message(9011, cqrs_id='nope'), DEAD),
    ('instance_data is a list', 'simplest', _message(9012, instance_data=[9012, 'p']), DEAD),
    ('instance_data is a string', 'simplest', _message(9013, instance_data='id=9013'), DEAD),
    (
        'instance_data without cqrs_revision',
        'simplest',
        _message(9014, instance_data={'id': 9014, 'name': 'poison', 'cqrs_updated': UPDATED}),
        DEAD,
    ),
    (
        'absurd revision 10**30',
        'simplest',
        _message(9015, instance_data=_data(9015, cqrs_revision=10**30)),
        DEAD,
    ),
    (
        'revision is a string',
        'simplest',
        _message(9016, instance_data=_data(9016, cqrs_revision='many')),
        DEAD,
    ),
    (
        'DELETE without id',
        'simplest',
        _message(
            9017, signal_type='DELETE', instance_data={'cqrs_revision': 1, 'cqrs_updated': UPDATED}
        ),
        DEAD,
    ),
    ('huge body (5 MB JSON list)', 'simplest', json.dumps(['x' * 1000] * 5000).encode(), REJECTED),
    (
        'huge SAVE (5 MB name, no cqrs_updated)',
        'simplest',
        _message(9018, instance_data={'id': 9018, 'name': 'x' * 5_000_000, 'cqrs_revision': 0}),
        DEAD,
    ),
    ('non-UTF-8 bytes', 'simplest', b'\xff\xfe{"cqrs_id": "simplest"}\x80\x81', REJECTED),
    # Odd but valid: the replica applies them.
    ('unknown top-level key', 'simplest', _message(9020, surprise={'x': 1}), APPLIED),
    (
        'unknown field in instance_data',
        'simplest',
        _message(9021, instance_data=_data(9021, colour='red')),
        APPLIED,
    ),
]


def _outcome(line: str) -> str:
    return next(kind for kind, regex in OUTCOMES.items() if regex.search(line))


@VENDORS
@pytest.mark.django_db(transaction=True)
def test_poison_messages_are_rejected_or_dead_lettered_and_the_worker_carries_on(
    vendor, master, names, amqp_url, replica_service
):
    """Each hand-made message has exactly one fate, none is requeued, the queue drains."""
    master()
    replica = replica_service(vendor=vendor, CQRS_TEST_MAX_RETRIES=0).start('-w', '1')
    replica.wait_ready()
    (worker,) = wait_for(lambda: worker_pids(replica), 10, message='the worker pid')

    def outcome_lines():
        return [line for line in replica.log().splitlines() if ANY_OUTCOME.search(line)]

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_bind(names['queue'], names['exchange'], 'nope')
        properties = pika.BasicProperties(content_type='text/plain', delivery_mode=2)
        fates = {}
        for kind, routing_key, body, _expected in POISON:
            before = len(outcome_lines())
            channel.basic_publish(names['exchange'], routing_key, body, properties)
            wait_for(
                lambda before=before: len(outcome_lines()) > before,
                15,
                message=f'the outcome of {kind!r} (log: {replica.log()[-1500:]})',
            )
            fates[kind] = _outcome(outcome_lines()[before])

        assert fates == {kind: expected for kind, _, _, expected in POISON}
        # One outcome each: a message requeued (redelivered) would log a second one.
        assert len(outcome_lines()) == len(POISON), outcome_lines()[len(POISON) :]

        save_changes(range(1, 4))
        applied = sorted((pk, 0) for pk in (9020, 9021))
        wait_for(
            lambda: replica_rows(replica) == sorted(master_rows() + applied),
            30,
            message='the replica rows: master rows plus the two odd but valid messages',
        )
        assert master_rows() == [(1, 0), (2, 0), (3, 0)]
        assert len(outcome_lines()) == len(POISON)

        log = replica.log()
        assert replica.process.poll() is None
        assert 'exited with code' not in log, log[-3000:]
        assert log.count('CQRS consumer is ready') == 1, 'the worker never restarted'
        assert worker_pids(replica) == [worker]

        # Drained: with the consumer gone, nothing unacknowledged returns to the queue.
        assert replica.stop() == 0
        assert queue_depth(channel, names['queue']) == 0
        dead = []
        while (got := channel.basic_get(names['dead_letter_queue'], auto_ack=True))[0]:
            dead.append(json.loads(got[2])['correlation_id'])
        expected_dead = [
            json.loads(body)['correlation_id'] for _, _, body, fate in POISON if fate == DEAD
        ]
        assert dead == expected_dead
    finally:
        connection.close()
