"""More fault injection with real processes and real RabbitMQ nodes (issue 14, item 1).

The broker is stopped (``stop_app``) while a thread of the master saves rows with the outbox
on; the saves keep succeeding, and after the restart ``cqrs_relay --once`` publishes what the
outbox kept. (The SIGKILL and broker-restart faults with a PostgreSQL replica are the
``vendor`` parameters of the tests in ``test_faults``.)

The test ends with the replica table equal to the master table and exact counts.
"""

from __future__ import annotations

import re
import sqlite3
import threading

import pytest
from django.db import connection as master_connection

from dj_cqrs.models import CQRSOutboxMessage
from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import SimplestModel
from tests.harness import (
    RECONNECT,
    applied_simplest,
    assert_replica_equals_master,
    outbox_on,
    private_node_broker,  # noqa: F401 (the ``broker`` fixture)
    queue_depth,
    relay_outbox,
)

DUPLICATE = re.compile(r'Received duplicate CQRS data: pk = (\d+), ')
RELAYED = re.compile(r'^Relayed (\d+) outbox messages\.$', re.MULTILINE)


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
    with sqlite3.connect(replica.database.path) as connection:
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
    assert set(applied_simplest(replica)) == set(range(1, total + 1))
    assert replica.query('SELECT pk, op FROM writes ORDER BY pk') == [
        (pk, 'insert') for pk in range(1, total + 1)
    ]
    print(f'{len(DUPLICATE.findall(replica.log()))} duplicate deliveries recognised')
    assert RECONNECT.search(replica.log())
    assert queue_depth(broker.url, names['queue']) == 0
    assert queue_depth(broker.url, names['dead_letter_queue']) == 0
