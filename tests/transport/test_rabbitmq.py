"""RabbitMQ transport against a real broker (SPEC §6 wire protocol, §7 consume / dead letters).

The master is this pytest process (``master`` fixture); replicas are ``cqrs_consume`` processes
with SQLite files of their own (``replica_service``). What the master sends is inspected with
pika directly, through a capture queue bound to the test exchange with ``#``.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import threading
from datetime import datetime, timedelta, timezone

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection as db_connection
from django.db import transaction
from django.test import override_settings

from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import FlakyModel, SimplestModel
from tests.harness import (
    APPLIED_SIMPLEST,
    RECEIVED_SIMPLEST,
    SIMPLEST,
    WIRE_KEYS,
    sqlite_write_lock,
    wait_for,
    wire_body,
    worker_pids,
)

FLAKY = 'dj_replica_flakyreplica'
FLAKY_ATTEMPT = 'dj_replica_flakyattempt'
EXPIRES_FORMAT = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\+00:00|Z)?$')


# --- helpers ----------------------------------------------------------------------------------


def error_lines(replica) -> list[str]:
    return [line for line in replica.log().splitlines() if ' ERROR ' in line]


def parse_expires(value: str) -> datetime:
    assert EXPIRES_FORMAT.match(value), value
    parsed = datetime.fromisoformat(value.replace('Z', '+00:00'))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def names_in(replica, table: str = SIMPLEST) -> dict:
    return dict(replica.query(f'SELECT id, name FROM {table}'))


def correlation(signal_type, cqrs_id, instance_pk, queue):
    return f'corr-{signal_type}-{cqrs_id}-{instance_pk}-{queue}'


def meta_function(**kwargs):
    return {'by': 'meta_function', 'signal_type': kwargs['signal_type']}


# --- 1. wire format ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_published_messages_follow_the_wire_protocol(master, broker):
    master()
    capture = broker.capture('#')
    before = datetime.now(tz=timezone.utc)

    obj = SimplestModel.objects.create(id=1, name='first')
    created_updated = str(obj.cqrs_updated)
    obj.name = 'second'
    obj.save()
    obj.refresh_from_db()
    assert obj.cqrs_sync(queue='q1')
    assert obj.cqrs_sync()
    obj.delete()

    messages = broker.take(capture, 5)
    assert broker.count(capture) == 0
    routing_keys = [routing_key for routing_key, _, _ in messages]
    assert routing_keys == ['simplest', 'simplest', 'cqrs.q1.simplest', 'simplest', 'simplest']
    for _, properties, body in messages:
        assert properties.delivery_mode == 2
        assert properties.content_type == 'text/plain'
        assert set(body) == WIRE_KEYS
        expires = parse_expires(body['expires'])
        # CQRS_MESSAGE_TTL is 3600 s in the master settings.
        assert before + timedelta(seconds=3500) < expires < before + timedelta(seconds=3700)

    bodies = [body for _, _, body in messages]
    expected_common = {'previous_data': None, 'correlation_id': None, 'retries': 0, 'meta': {}}
    assert {key: bodies[0][key] for key in WIRE_KEYS - {'expires'}} == {
        'signal_type': 'SAVE',
        'cqrs_id': 'simplest',
        'instance_data': {
            'id': 1,
            'name': 'first',
            'cqrs_revision': 0,
            'cqrs_updated': created_updated,
        },
        'instance_pk': 1,
        **expected_common,
    }
    second = {
        'id': 1,
        'name': 'second',
        'cqrs_revision': 1,
        'cqrs_updated': str(obj.cqrs_updated),
    }
    for body, signal_type in zip(bodies[1:4], ('SAVE', 'SYNC', 'SYNC'), strict=True):
        assert {key: body[key] for key in WIRE_KEYS - {'expires'}} == {
            'signal_type': signal_type,
            'cqrs_id': 'simplest',
            'instance_data': second,
            'instance_pk': 1,
            **expected_common,
        }
    delete = bodies[4]
    assert {key: delete[key] for key in WIRE_KEYS - {'expires', 'instance_data'}} == {
        'signal_type': 'DELETE',
        'cqrs_id': 'simplest',
        'instance_pk': 1,
        **expected_common,
    }
    assert set(delete['instance_data']) == {'id', 'cqrs_revision', 'cqrs_updated'}
    assert delete['instance_data']['id'] == 1
    assert delete['instance_data']['cqrs_revision'] == 2
    assert datetime.fromisoformat(delete['instance_data']['cqrs_updated']) >= before


@pytest.mark.django_db(transaction=True)
def test_correlation_id_and_meta_go_on_the_wire(master, broker):
    settings = master()
    capture = broker.capture('#')
    master_settings = {
        **settings['master'],
        'correlation_function': correlation,
        'meta_function': meta_function,
    }
    with override_settings(CQRS={**settings, 'master': master_settings}):
        obj = SimplestModel.objects.create(id=3, name='meta')
        obj.cqrs_sync(queue='q2')

    (key1, _, save), (key2, _, sync) = broker.take(capture, 2)
    assert (key1, key2) == ('simplest', 'cqrs.q2.simplest')
    assert save['correlation_id'] == 'corr-SAVE-simplest-3-None'
    assert save['meta'] == {'by': 'meta_function', 'signal_type': 'SAVE'}
    assert sync['correlation_id'] == 'corr-SYNC-simplest-3-q2'
    assert sync['meta'] == {'by': 'meta_function', 'signal_type': 'SYNC'}


# --- 2. SYNC to one queue ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_sync_to_a_queue_reaches_only_that_replica(master, names, replica_service):
    other_queue = f'other_{names["queue"]}'
    first = replica_service().start('-w', '1')
    second = replica_service(queue=other_queue).start('-w', '1')
    first.wait_ready()
    second.wait_ready()
    master()

    obj = SimplestModel.objects.create(id=1, name='broadcast')
    for replica in (first, second):
        wait_for(lambda r=replica: names_in(r) == {1: 'broadcast'}, message='broadcast SAVE')

    SimplestModel.objects.filter(id=1).update(name='behind cqrs')
    assert obj.cqrs_sync(queue=names['queue'])
    wait_for(lambda: names_in(first) == {1: 'behind cqrs'}, message='SYNC on the first replica')

    # A later broadcast marks the point where the second replica has seen everything before it.
    SimplestModel.objects.create(id=2, name='marker')
    wait_for(lambda: 2 in names_in(second), message='marker on the second replica')
    assert names_in(second) == {1: 'broadcast', 2: 'marker'}

    # And the other way round.
    SimplestModel.objects.filter(id=2).update(name='only second')
    assert SimplestModel.objects.get(id=2).cqrs_sync(queue=other_queue)
    wait_for(lambda: names_in(second)[2] == 'only second', message='SYNC on the second replica')
    SimplestModel.objects.create(id=3, name='marker 2')
    wait_for(lambda: 3 in names_in(first), message='marker 2 on the first replica')
    assert names_in(first) == {1: 'behind cqrs', 2: 'marker', 3: 'marker 2'}


# --- 3. retries and dead letters ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_failed_message_is_retried_until_applied(master, names, broker, replica_service):
    replica = replica_service().start('-w', '1')
    replica.wait_ready()
    master()

    FlakyModel.objects.create(id=1, name='flaky', fail_times=2)

    wait_for(lambda: replica.count(FLAKY) == 1, message='flaky row applied after retries')
    assert replica.query(f'SELECT attempts FROM {FLAKY_ATTEMPT} WHERE id = 1') == [(3,)]
    assert replica.query(f'SELECT id, name FROM {FLAKY}') == [(1, 'flaky')]
    assert broker.count(names['dead_letter_queue']) == 0


@pytest.mark.django_db(transaction=True)
def test_dead_letters_dump_retry_and_purge(master, names, broker, replica_service):
    """A row that always fails and one that recovers after its retries were used up: both are
    dead letters; after ``retry`` the second is applied and the first is a dead letter again."""
    replica = replica_service().start('-w', '1')
    replica.wait_ready()
    settings = master()
    dead_letters = names['dead_letter_queue']

    def attempts():
        return dict(replica.query(f'SELECT id, attempts FROM {FLAKY_ATTEMPT}'))

    # A short TTL on the master, so that the expiry set again by `retry` is visibly fresh.
    with override_settings(CQRS={**settings, 'master': {'CQRS_MESSAGE_TTL': 120}}):
        FlakyModel.objects.create(id=1, name='doomed', always_fail=True)
        FlakyModel.objects.create(id=2, name='recovers', fail_times=5)

    # 1 try + CQRS_MAX_RETRIES (3) each, then the dead-letter queue.
    wait_for(lambda: broker.count(dead_letters) == 2, message='messages in the dead letters')
    assert attempts() == {1: 4, 2: 4}
    assert replica.count(FLAKY) == 0
    peeked = sorted(broker.peek(dead_letters, 2), key=lambda message: message[2]['instance_pk'])
    for pk, (routing_key, properties, dead) in enumerate(peeked, 1):
        assert routing_key == f'cqrs.{dead_letters}.flaky'
        assert dead['retries'] == 3
        assert dead['cqrs_id'] == 'flaky'
        assert dead['instance_pk'] == pk
        assert properties.delivery_mode == 2
        assert properties.expiration == str(864000 * 1000)
    dead = {message[2]['instance_pk']: message[2] for message in peeked}
    old_expires = parse_expires(dead[1]['expires'])

    dump = replica.manage('cqrs_dead_letters', 'dump')
    dumped = [json.loads(line) for line in dump.stdout.splitlines() if line.strip()]
    assert sorted((d['instance_pk'], d['cqrs_id'], d['retries']) for d in dumped) == [
        (1, 'flaky', 3),
        (2, 'flaky', 3),
    ]
    wait_for(lambda: broker.count(dead_letters) == 2, message='dump leaves the dead letters')

    assert replica.stop() == 0
    retry = replica.manage('cqrs_dead_letters', 'retry')
    assert re.search(r'\b2\b', retry.stdout), retry.stdout
    assert broker.count(dead_letters) == 0
    retried = broker.peek(names['queue'], 2)
    assert replica.count(FLAKY) == 0
    for routing_key, properties, body in retried:
        assert routing_key == f'cqrs.{names["queue"]}.flaky'
        assert body['retries'] == 0
        assert body['instance_data'] == dead[body['instance_pk']]['instance_data']
        assert parse_expires(body['expires']) - old_expires > timedelta(seconds=3000)
        assert properties.expiration is None
    assert sorted(body['instance_pk'] for _, _, body in retried) == [1, 2]

    # The retried messages go through the whole cycle again: row 2 is applied at its 6th
    # attempt (fail_times=5), row 1 is a dead letter again.
    replica.start('-w', '1')
    replica.wait_ready(2)
    wait_for(lambda: replica.count(FLAKY) == 1, message='the recovering row applied')
    wait_for(lambda: broker.count(dead_letters) == 1, message='dead letter again')
    assert attempts() == {1: 8, 2: 6}
    assert replica.query(f'SELECT id, name FROM {FLAKY}') == [(2, 'recovers')]

    purge = replica.manage('cqrs_dead_letters', 'purge')
    assert re.search(r'\b1\b', purge.stdout), purge.stdout
    assert broker.count(dead_letters) == 0
    assert broker.count(names['queue']) == 0
    assert replica.query(f'SELECT id FROM {FLAKY}') == [(2,)]


def test_dead_letters_command_requires_rabbitmq():
    settings = {'transport': 'dj_cqrs.transport.mock.TransportMock', 'queue': 'replica'}
    with override_settings(CQRS=settings), pytest.raises(CommandError, match='RabbitMQ'):
        call_command('cqrs_dead_letters', 'dump')


# --- 4. expired messages ----------------------------------------------------------------------


def test_expired_message_goes_to_dead_letters_unapplied(names, broker, replica_service):
    replica = replica_service().start('-w', '1')
    replica.wait_ready()

    broker.publish(wire_body(1, expires='2000-01-01T00:00:00+00:00'), 'simplest')
    broker.publish(wire_body(2, expires=None), 'simplest')

    wait_for(lambda: 2 in names_in(replica), message='the valid message applied')
    wait_for(lambda: broker.count(names['dead_letter_queue']) == 1, message='expired dead letter')
    assert names_in(replica) == {2: 'hand 2'}
    [(routing_key, _, dead)] = broker.peek(names['dead_letter_queue'], 1)
    assert routing_key == f'cqrs.{names["dead_letter_queue"]}.simplest'
    assert dead['instance_pk'] == 1
    assert dead['expires'] == '2000-01-01T00:00:00+00:00'
    assert dead['retries'] == 0


# --- 5. malformed messages ------------------------------------------------------------------


def test_malformed_messages_are_logged_and_dropped(names, broker, replica_service):
    replica = replica_service().start('-w', '1')
    replica.wait_ready()
    workers = worker_pids(replica)
    assert len(workers) == 1

    unparseable = [
        b'this is not JSON {',
        b'[1, 2, 3]',
        b'\xff\xfe\xfa not utf-8',
        *(
            json.dumps({k: v for k, v in wire_body(10 + i).items() if k != key})
            for i, key in enumerate(('instance_pk', 'signal_type', 'cqrs_id', 'instance_data'))
        ),
    ]
    for body in unparseable:
        errors = len(error_lines(replica))
        broker.publish(body, 'simplest')
        wait_for(
            lambda n=errors: len(error_lines(replica)) > n,
            message=f'an error log line for {body!r}',
        )

    for key in ('instance_pk', 'signal_type', 'cqrs_id', 'instance_data'):
        assert any(key in line for line in error_lines(replica)), key

    broker.publish(wire_body(20, signal_type='BOGUS'), 'simplest')
    wait_for(
        lambda: any('BOGUS' in line for line in error_lines(replica)),
        message='an error for the unknown signal type',
    )
    broker.publish(wire_body(21, cqrs_id='no_such_model'), 'simplest')
    wait_for(
        lambda: any('no_such_model' in line for line in error_lines(replica)),
        message='an error for the unknown CQRS_ID',
    )

    broker.publish(wire_body(30), 'simplest')
    wait_for(lambda: 30 in names_in(replica), message='the valid message after the bad ones')
    # The unknown signal type is retried, then dead-lettered; it is never applied.
    wait_for(
        lambda: broker.count(names['dead_letter_queue']) == 1,
        message='unknown signal type in the dead letters',
    )
    assert names_in(replica) == {30: 'hand 30'}
    assert replica.process.poll() is None
    assert worker_pids(replica) == workers
    log = replica.log()
    assert 'exited with code' not in log
    assert 'Traceback' not in log
    assert broker.count(names['queue']) == 0


# --- 7. producer robustness -------------------------------------------------------------------


def _break_socket():
    RabbitMQTransport._publisher._connection._impl._transport._sock.close()


def _shutdown_socket():
    RabbitMQTransport._publisher._connection._impl._transport._sock.shutdown(socket.SHUT_RDWR)


def _close_connection():
    RabbitMQTransport._publisher._connection.close()


def _save_in_thread(pk: int, name: str) -> None:
    try:
        SimplestModel.objects.create(id=pk, name=name)
    finally:
        db_connection.close()


def _forget_dead_publisher_connection():
    """Drop a publisher connection whose socket is gone without closing it.

    Closing such a connection waits for the heartbeat timeout (minutes); this keeps a failure
    of the test below from also stalling the ``master`` fixture's teardown.
    """
    publisher = RabbitMQTransport._publisher
    transport = getattr(getattr(publisher._connection, '_impl', None), '_transport', None)
    sock = getattr(transport, '_sock', None)
    if sock is not None and sock.fileno() == -1:
        publisher._connection = publisher._channel = None


@pytest.mark.parametrize(
    'break_connection',
    [_break_socket, _shutdown_socket, _close_connection],
    ids=['socket-closed', 'socket-shut-down', 'connection-closed'],
)
@pytest.mark.django_db(transaction=True)
def test_publishing_survives_a_broken_connection(
    master, amqp_url, broker, replica_service, break_connection
):
    replica = replica_service().start('-w', '1')
    replica.wait_ready()
    # A 15 s heartbeat: a publisher that only notices the dead socket through missed
    # heartbeats stays stuck longer than the wait below, but not for minutes.
    master(url=f'{amqp_url}?heartbeat=15')
    capture = broker.capture('#')

    SimplestModel.objects.create(id=1, name='before')
    wait_for(lambda: names_in(replica) == {1: 'before'}, message='first row')
    assert RabbitMQTransport.flush()
    opened = RabbitMQTransport.connections_opened()

    break_connection()
    # The save runs in a thread, so that a publisher stuck on the dead connection fails the
    # wait below instead of blocking the test.
    saver = threading.Thread(target=_save_in_thread, args=(2, 'after'), daemon=True)
    try:
        saver.start()
        wait_for(
            lambda: names_in(replica) == {1: 'before', 2: 'after'},
            timeout=30,
            message='the row saved after the break',
        )
    finally:
        saver.join(120)
        _forget_dead_publisher_connection()
        RabbitMQTransport.flush()
    assert RabbitMQTransport.connections_opened() == opened + 1
    assert RabbitMQTransport.flush()
    # Exactly one copy of each message reached the broker.
    messages = broker.take(capture, 2)
    assert [body['instance_pk'] for _, _, body in messages] == [1, 2]
    assert broker.count(capture) == 0

    # And the new connection keeps working.
    SimplestModel.objects.create(id=3, name='later')
    wait_for(lambda: 3 in names_in(replica), message='a later row')
    assert RabbitMQTransport.connections_opened() == opened + 1


FORKING_PUBLISHER = """
import json, os
from dj_cqrs.transport import RabbitMQTransport
from dj_cqrs.utils import get_message_expiration_dt
from tests.harness import instance_data, payload


def produce_and_flush(pk, name):
    expires = get_message_expiration_dt()
    sent = payload('SAVE', 'simplest', instance_data(pk, name=name), expires=expires)
    return bool(RabbitMQTransport.produce(sent) and RabbitMQTransport.flush(10))


report = {'parent_before': produce_and_flush(1, 'parent before fork')}
opened = RabbitMQTransport.connections_opened()
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read_end)
    child = {'published': produce_and_flush(2, 'child')}
    child['own_connection'] = RabbitMQTransport.connections_opened() == opened + 1
    os.write(write_end, json.dumps(child).encode())
    os._exit(0)
os.close(write_end)
with os.fdopen(read_end) as pipe:
    report['child'] = json.loads(pipe.read() or 'null')
report['child_exit'] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
report['parent_after'] = produce_and_flush(3, 'parent after fork')
report['parent_connections'] = RabbitMQTransport.connections_opened() - opened
print(json.dumps(report))
"""


def test_forked_child_publishes_on_its_own_connection(replica_service):
    """A process that forks after publishing (here a subprocess, not the test runner)."""
    replica = replica_service().start('-w', '1')
    replica.wait_ready()

    result = replica.manage('shell', '-c', FORKING_PUBLISHER)

    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        'parent_before': True,
        'child': {'published': True, 'own_connection': True},
        'child_exit': 0,
        'parent_after': True,
        'parent_connections': 0,
    }, result.stderr
    wait_for(lambda: len(names_in(replica)) == 3, message='the three messages')
    assert names_in(replica) == {1: 'parent before fork', 2: 'child', 3: 'parent after fork'}


@pytest.mark.django_db(transaction=True)
def test_password_is_never_logged_when_broker_is_unreachable(master, caplog):
    caplog.set_level(logging.DEBUG)
    master(url='amqp://guest:s3cretpw@127.0.0.1:1/%2F')

    SimplestModel.objects.create(id=1, name='unpublished')
    with transaction.atomic():
        SimplestModel.objects.create(id=2, name='unpublished either')

    assert SimplestModel.objects.count() == 2
    errors = [r for r in caplog.records if r.name == 'django-cqrs' and r.levelno >= logging.ERROR]
    assert len(errors) == 2
    assert '127.0.0.1:1' in caplog.text
    assert 's3cretpw' not in caplog.text
    assert 's3cretpw' not in repr([r.args for r in caplog.records])


# --- 8. graceful stop -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_sigterm_stops_gracefully_and_loses_nothing(master, names, broker, replica_service):
    total = 4000
    # The replica queue exists before the consumer starts, so the backlog is there at once.
    broker.bind_replica_queue('simplest')
    master()
    for start in range(0, total, 1000):
        with transaction.atomic():
            for pk in range(start, start + 1000):
                SimplestModel.objects.create(id=pk, name=f'n{pk}')
    assert RabbitMQTransport.flush()
    wait_for(lambda: broker.count(names['queue']) == total, message=f'{total} queued messages')

    # RabbitMQTransport prefetches the delay queue size + 1 per worker.
    prefetch = 50
    replica = replica_service(CQRS_TEST_DELAY_QUEUE=prefetch - 1)
    # Consumption held back: both workers take their prefetch and wait for the write lock, so
    # SIGTERM comes with deliveries in flight whatever the speed of the machine.
    with sqlite_write_lock(replica.database.path):
        replica.start('-w', '2')
        replica.wait_ready(2)
        wait_for(
            lambda: broker.count(names['queue']) == total - 2 * prefetch,
            message='both workers holding their prefetch',
        )
        wait_for(lambda: RECEIVED_SIMPLEST.search(replica.log()), message='a batch in hand')
        replica.process.send_signal(signal.SIGTERM)
        in_hand = set(RECEIVED_SIMPLEST.findall(replica.log()))
    assert replica.process.wait(60) == 0
    stopped_at = replica.count()
    log = replica.log()
    assert 'did not stop' not in log
    assert 'Traceback' not in log
    # The batches in hand were applied, and so was whatever else the workers took before the
    # stop reached them (however late that was): nothing taken was dropped.
    applied = set(APPLIED_SIMPLEST.findall(log))
    assert in_hand <= applied == set(RECEIVED_SIMPLEST.findall(log))
    assert len(applied) == stopped_at
    # Prefetched but unapplied messages went back to the queue.
    wait_for(
        lambda: broker.count(names['queue']) == total - stopped_at,
        message='the rest of the messages back in the queue',
    )

    replica.start('-w', '1')
    wait_for(lambda: replica.count() == total, timeout=120, message=f'{total} rows')
    rows = replica.query(f'SELECT id, name, cqrs_revision FROM {SIMPLEST} ORDER BY id')
    assert rows == [(pk, f'n{pk}', 0) for pk in range(total)]
    assert broker.count(names['queue']) == 0
    assert broker.count(names['dead_letter_queue']) == 0
