"""``cqrs_relay --once`` drains at once after an outage (issue 11, item 5), on a real RabbitMQ node.

A change whose on-commit publish failed (broker down, a nack, the connection lost before the
confirm) is due for the relay at once, whatever ``--min-age`` says; ``--min-age`` only protects
rows whose publish may still be in flight. The tests do what an operator does: stop the
broker, save, start it, run ``cqrs_relay --once`` with its default ``--min-age`` (5 s) right
away, and check the replica. "Right away" does not depend on the speed of the machine: the
outbox rows are made fresh (``created`` set to now) just before the relay runs.
"""

from __future__ import annotations

import io
import re
import sqlite3

import pika
import pytest
from django.core.management import call_command
from django.utils import timezone

from dj_cqrs import outbox
from dj_cqrs.constants import SignalType
from dj_cqrs.models import CQRSOutboxMessage
from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import SimplestModel
from tests.harness import (
    MASTER_TABLE,
    OUTBOX,
    assert_replica_equals_master,
    full_queue,
    make_changes,
    master_service,
    outbox_on,
    private_node_broker,  # noqa: F401 (the ``broker`` fixture)
    queue_depth,
    replica_names,
    reset_publisher,
    run_command,
    wait_equal,
    wait_for,
)
from tests.harness import (
    SIMPLEST as REPLICA_TABLE,
)

RELAYED = re.compile(r'^Relayed (\d+) outbox messages\.$', re.MULTILINE)
SAVES = 300
IN_FLIGHT = 50


def make_fresh() -> None:
    """Every outbox row written just now, well within the default ``--min-age``."""
    CQRSOutboxMessage.objects.update(created=timezone.now())


def depths(url: str, names: dict) -> tuple[int, int]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        return (
            queue_depth(channel, names['queue']),
            queue_depth(channel, names['dead_letter_queue']),
        )
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_item_05_relay_once_right_after_an_outage_drains_every_failed_save(
    master, names, broker, replica_service
):
    master(url=broker.url)
    replica = replica_service(url=broker.url).start('-w', '1')
    replica.wait_ready()
    # The durable replica queue exists; the consumer is started again after the outage.
    assert replica.stop() == 0

    with outbox_on():
        # Published, their confirms not read yet when the broker stops: the connection is
        # lost before the confirm.
        for pk in range(1, IN_FLIGHT + 1):
            SimplestModel.objects.create(id=pk, name=f'row {pk}')
        broker.stop_app()
        try:
            for pk in range(IN_FLIGHT + 1, IN_FLIGHT + SAVES + 1):
                SimplestModel.objects.create(id=pk, name=f'row {pk}')
            outbox.flush_published()
            kept = CQRSOutboxMessage.objects.count()
            assert SAVES <= kept <= IN_FLIGHT + SAVES
            assert CQRSOutboxMessage.objects.filter(failed_at__isnull=True).count() == 0, (
                'every failed publish marked its row'
            )
            print(f'{kept - SAVES} of {IN_FLIGHT} rows published before the stop kept')
        finally:
            broker.start_app()
        make_fresh()
        # The operator's relay is a process of its own: no memory of the broker being down.
        reset_publisher()
        out, err = run_command('cqrs_relay', '--once', '--database', 'default')  # default --min-age

        assert out == ''
        assert RELAYED.findall(err) == [str(kept)], err
        assert CQRSOutboxMessage.objects.count() == 0

        # In-flight protection still holds: a row committed by a process that has not
        # published it yet (no failure recorded) is left alone until --min-age has passed.
        SimplestModel.objects.bulk_create([SimplestModel(id=0, name='in flight')])
        outbox.record('default', 'simplest', 0, SignalType.SAVE)
        out, err = run_command('cqrs_relay', '--once', '--database', 'default')  # default --min-age
        assert RELAYED.findall(err) == ['0'], err
        assert list(CQRSOutboxMessage.objects.values_list('instance_pk', flat=True)) == ['0']
        call_command(
            'cqrs_relay', '--once', '--min-age', '0', '--database', 'default', stderr=io.StringIO()
        )
        assert CQRSOutboxMessage.objects.count() == 0

    replica.start('-w', '1')
    assert_replica_equals_master(replica)
    assert RabbitMQTransport.flush()
    assert replica.stop() == 0
    assert depths(broker.url, names) == (0, 0)


def test_item_05_manage_py_relay_once_right_after_an_outage(broker, names, replica_service):
    master = master_service(replica_service, broker.url)
    replica = replica_service(url=broker.url).declare_queue()

    broker.stop_app()
    try:
        make_changes(
            master,
            broker.url,
            'from tests.dj_master.models import SimplestModel\n'
            f'for pk in range(1, {SAVES + 1}):\n'
            "    SimplestModel.objects.create(id=pk, name=f'row {pk}')\n",
        )
    finally:
        broker.start_app()
    assert master.query(f'SELECT COUNT(*), COUNT(failed_at) FROM {OUTBOX}') == [(SAVES, SAVES)]
    with sqlite3.connect(master.database.path) as connection:
        connection.execute(f"UPDATE {OUTBOX} SET created = strftime('%Y-%m-%d %H:%M:%f', 'now')")

    relayed = master.manage('cqrs_relay', '--once')

    assert relayed.returncode == 0
    assert relayed.stdout == ''
    assert RELAYED.findall(relayed.stderr) == [str(SAVES)], relayed.stderr
    assert master.count(OUTBOX) == 0
    replica.start('-w', '1')
    wait_equal(
        lambda: replica_names(master, MASTER_TABLE), lambda: replica_names(replica, REPLICA_TABLE)
    )
    assert len(replica_names(replica, REPLICA_TABLE)) == SAVES
    assert replica.stop() == 0
    assert depths(broker.url, names) == (0, 0)


LIMIT = 10


@pytest.mark.django_db(transaction=True)
def test_item_05_a_nacked_publish_makes_its_row_due_at_once(master, names, broker, replica_service):
    master(url=broker.url)
    replica = replica_service(url=broker.url)
    with outbox_on():
        with full_queue(broker, names, LIMIT):
            for pk in range(1, 16):
                SimplestModel.objects.create(id=pk, name=f'row {pk}')
            # Reads the confirms (the nacks stay with the publisher, which retries them).
            assert not RabbitMQTransport.flush(timeout=1)
            outbox.flush_published()
            kept = CQRSOutboxMessage.objects.filter(failed_at__isnull=False)
            assert CQRSOutboxMessage.objects.count() == 15 - LIMIT
            assert sorted(int(pk) for pk in kept.values_list('instance_pk', flat=True)) == list(
                range(LIMIT + 1, 16)
            ), 'exactly the refused messages are kept, marked failed'

        replica.start('-w', '1')
        wait_for(lambda: replica.count() >= LIMIT, message='the accepted messages applied')
        make_fresh()
        out, err = run_command('cqrs_relay', '--once', '--database', 'default')  # default --min-age
        assert RELAYED.findall(err) == [str(15 - LIMIT)], err
        assert CQRSOutboxMessage.objects.count() == 0

    assert_replica_equals_master(replica)
    assert RabbitMQTransport.flush()
    assert replica.stop() == 0
    assert depths(broker.url, names) == (0, 0)
