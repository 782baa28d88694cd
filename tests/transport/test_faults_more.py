"""More fault injection with real processes and real RabbitMQ nodes (issue 14, item 1).

a. The broker is stopped (``stop_app``) while a thread of the master saves rows with the outbox
   on; the saves keep succeeding, and after the restart ``cqrs_relay --once`` publishes what
   the outbox kept.
b. The SIGKILL and broker-restart faults of ``test_faults`` with a PostgreSQL replica: the
   worker is held back by a lock on the replica table (``LOCK TABLE ... IN EXCLUSIVE MODE``
   blocks its writes, not the test's reads), so the fault hits it in the middle of a batch
   whatever the speed of the machine.

Every test ends with the replica table equal to the master table and exact counts.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import threading
from collections import Counter

import pika
import pytest
from django.db import connection as master_connection

from dj_cqrs.models import CQRSOutboxMessage
from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import SimplestModel
from tests.harness import (
    RECONNECT,
    assert_replica_equals_master,
    create_in_transactions,
    outbox_on,
    private_node_broker,  # noqa: F401 (the ``broker`` fixture)
    queue_depth,
    received_pks,
    relay_outbox,
    wait_for,
    worker_pids,
    write_lock,
)

APPLIED = re.compile(r'CQRS is applied: pk = (\d+) \(simplest\)')
DUPLICATE = re.compile(r'Received duplicate CQRS data: pk = (\d+), ')
RELAYED = re.compile(r'^Relayed (\d+) outbox messages\.$', re.MULTILINE)


def applied(replica) -> Counter:
    return Counter(int(pk) for pk in APPLIED.findall(replica.log()))


# --- a. stop_app while a thread saves with the outbox on ---------------------------------------


WRITES = """
CREATE TABLE writes (pk integer, op text);
CREATE TRIGGER count_inserts AFTER INSERT ON dj_replica_simplestreplica
    BEGIN INSERT INTO writes VALUES (NEW.id, 'insert'); END;
CREATE TRIGGER count_updates AFTER UPDATE ON dj_replica_simplestreplica
    BEGIN INSERT INTO writes VALUES (NEW.id, 'update'); END;
"""


class Saver(threading.Thread):
    """Saves rows 1, 2, ... one per transaction, in three phases driven by the test.

    1. ``BEFORE`` rows with the broker up, then ``started`` is set;
    2. rows as fast as it can until ``stopped`` is set (the broker goes down meanwhile);
    3. ``AFTER`` more rows with the broker down for sure.
    """

    BEFORE, AFTER, LIMIT = 100, 200, 50_000

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.saved = 0
        self.error: BaseException | None = None

    def save(self) -> None:
        pk = self.saved + 1
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
        self.saved = pk

    def run(self) -> None:
        try:
            for _ in range(self.BEFORE):
                self.save()
            self.started.set()
            while not self.stopped.is_set() and self.saved < self.LIMIT:
                self.save()
            for _ in range(self.AFTER):
                self.save()
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()
            master_connection.close()


@pytest.mark.django_db(transaction=True)
def test_item_01_stop_app_while_a_thread_saves_with_the_outbox_then_relay(
    master, names, broker, replica_service
):
    master(url=broker.url)
    replica = replica_service(url=broker.url)
    with sqlite3.connect(replica.db_path) as connection:
        connection.executescript(WRITES)
    replica.start('-w', '1').wait_ready()

    with outbox_on():
        saver = Saver()
        saver.start()
        try:
            assert saver.started.wait(60), 'the first rows saved'
            broker.stop_app()
        finally:
            saver.stopped.set()
            saver.join(120)
        assert not saver.is_alive()
        assert saver.error is None, repr(saver.error)
        total = saver.saved
        assert Saver.BEFORE + Saver.AFTER <= total < Saver.LIMIT + Saver.AFTER
        assert sorted(SimplestModel.objects.values_list('id', flat=True)) == list(
            range(1, total + 1)
        )
        kept = set(CQRSOutboxMessage.objects.values_list('instance_pk', flat=True))
        # The rows saved with the broker down for sure are all kept (and perhaps others whose
        # confirm the stop cut off).
        assert {str(pk) for pk in range(total - Saver.AFTER + 1, total + 1)} <= kept
        print(f'{total} saves; {len(kept)} outbox rows kept while the broker was down')

        broker.start_app()
        relayed = relay_outbox()
        # The relay publishes the rows kept, less those whose message the publisher still
        # held and confirmed on its new connection: the AFTER rows at least (their publish
        # failed at once, only the relay has them).
        [count] = map(int, RELAYED.findall(relayed))
        assert Saver.AFTER <= count <= len(kept), relayed
        assert CQRSOutboxMessage.objects.count() == 0
        assert_replica_equals_master(replica)

    # Each row was written once on the replica (the triggers count the writes), though a
    # message may come more than once: applied but not acknowledged when the broker stopped,
    # or published before the stop and relayed because its confirm never came.
    assert RabbitMQTransport.flush()
    assert replica.stop() == 0
    assert set(applied(replica)) == set(range(1, total + 1))
    assert replica.query('SELECT pk, op FROM writes ORDER BY pk') == [
        (pk, 'insert') for pk in range(1, total + 1)
    ]
    print(f'{len(DUPLICATE.findall(replica.log()))} duplicate deliveries recognised')
    assert RECONNECT.search(replica.log())
    channel = pika.BlockingConnection(pika.URLParameters(broker.url)).channel()
    try:
        assert queue_depth(channel, names['queue']) == 0
        assert queue_depth(channel, names['dead_letter_queue']) == 0
    finally:
        channel.connection.close()


# --- b. SIGKILL of a worker mid-stream, PostgreSQL replica -------------------------------------


@pytest.mark.django_db(transaction=True)
def test_item_01_sigkilled_worker_loses_nothing_on_postgresql(master, replica_service):
    total = 1500
    master()
    replica = replica_service(vendor='postgresql').start('-w', '1')
    replica.wait_ready()
    (victim,) = wait_for(lambda: worker_pids(replica), 10, message='the worker pid')

    # As in test_faults: ten rows applied; the worker frozen while the rest is queued, then
    # resumed against a locked replica table and killed while it holds received, unapplied,
    # unacknowledged messages.
    create_in_transactions(list(range(1, 11)), 1)
    wait_for(lambda: replica.count() == 10, 30, message='the first ten rows applied')
    os.kill(victim, signal.SIGSTOP)
    try:
        create_in_transactions(list(range(11, total + 1)), 5)
        assert RabbitMQTransport.flush(timeout=60)
        with write_lock(replica, 'postgresql'):
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
    counts = applied(replica)
    assert set(counts) == set(range(1, total + 1))
    # Only what the killed worker held comes again, and is applied without a second write.
    held = set(received_pks(replica.log(), victim)) - set(range(1, 11))
    assert {pk for pk, count in counts.items() if count > 1} <= held
    assert replica.count() == total


# --- b. RabbitMQ restarts while a worker is stuck in a batch, PostgreSQL replica ---------------


@pytest.mark.django_db(transaction=True)
def test_item_01_worker_reconnects_after_a_broker_restart_on_postgresql(
    master, names, broker, replica_service
):
    master(url=broker.url)
    # A delay queue of 100: the worker takes 101 messages at a time (its prefetch).
    replica = replica_service(url=broker.url, vendor='postgresql', CQRS_TEST_DELAY_QUEUE=100)
    replica.start('-w', '1').wait_ready()
    (worker,) = wait_for(lambda: worker_pids(replica), 10, message='the worker pid')

    create_in_transactions(list(range(1, 11)), 1)
    wait_for(lambda: replica.count() == 10, 30, message='the first ten rows applied')
    with write_lock(replica, 'postgresql'):
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
    finally:
        broker.start_app()

    create_in_transactions(list(range(511, 1011)), 2)
    assert_replica_equals_master(replica, timeout=120)
    assert RabbitMQTransport.flush()

    log = replica.log()
    assert 'exited with code' not in log, log[-3000:]
    assert worker_pids(replica) == [worker], 'the same worker reconnected by itself'
    assert log.count('CQRS consumer is ready') >= 2, log[-3000:]
    assert replica.stop() == 0
    assert set(applied(replica)) == set(range(1, 1011))
    assert replica.count() == 1010
    channel = pika.BlockingConnection(pika.URLParameters(broker.url)).channel()
    try:
        assert queue_depth(channel, names['queue']) == 0
        assert queue_depth(channel, names['dead_letter_queue']) == 0
    finally:
        channel.connection.close()
