"""The transactional outbox and ``cqrs_relay`` against real brokers (issue 14, item 1 c-e).

The master is a service process of its own (``replica_service`` with the outbox switched on):
its SQLite file holds the master table and the outbox, its ``manage.py shell`` makes the
changes, its ``cqrs_relay`` publishes what the outbox kept. The replica is another service
running ``cqrs_consume``. Every test ends with the replica table equal to the master table
and exact counts of outbox rows, queued messages and relayed messages.
"""

from __future__ import annotations

import re
import signal
import subprocess

import pytest

from tests.harness import (
    MASTER_TABLE,
    OUTBOX,
    SIMPLEST,
    full_queue,
    handles_signal,
    make_changes,
    master_service,
    private_node_broker,  # noqa: F401 (the ``broker`` fixture)
    queue_depth,
    replica_names,
    sqlite_write_lock,
    wait_equal,
    wait_for,
)

REPLICA_TABLE = SIMPLEST
UNREACHABLE = 'amqp://guest:guest@127.0.0.1:1/%2F'
RELAYED = re.compile(r'^Relayed (\d+) outbox messages\.$', re.MULTILINE)

# 40 creates, 10 updates in one transaction, 5 deletes: 55 outbox rows, 35 rows left.
CHANGES = """
from django.db import transaction
from tests.dj_master.models import SimplestModel
for pk in range(1, 41):
    SimplestModel.objects.create(id=pk, name=f'row {pk}')
with transaction.atomic():
    for row in SimplestModel.objects.filter(id__lte=10):
        row.name = f'{row.name} updated'
        row.save()
for row in SimplestModel.objects.filter(id__gt=35):
    row.delete()
"""
CHANGED_ROWS = 55


def outbox_count(service) -> int:
    return service.count(OUTBOX)


def relay_in(master, check: bool = True) -> subprocess.CompletedProcess:
    """`manage.py cqrs_relay --once --min-age 0` run by the master service (a process)."""
    return master.manage('cqrs_relay', '--once', '--min-age', '0', check=check)


# --- c. cqrs_relay while the broker is down ----------------------------------------------------


def test_item_01c_relay_while_the_broker_is_down_keeps_the_rows_then_drains_them(
    broker, names, replica_service
):
    master = master_service(replica_service, broker.url)
    # The consumer is stopped, not to wait for its reconnection back-off after the restart.
    replica = replica_service(url=broker.url).declare_queue()

    broker.stop_app()
    try:
        make_changes(master, broker.url, CHANGES)
        assert outbox_count(master) == CHANGED_ROWS, 'every change has its outbox row'
        failed = relay_in(master, check=False)
        assert outbox_count(master) == CHANGED_ROWS, 'the failed relay kept every row'
    finally:
        broker.start_app()

    print(failed.stderr)
    assert failed.returncode == 1
    assert 'Traceback' not in failed.stderr, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith('CommandError')]
    assert len(errors) == 1, failed.stderr
    assert errors[0].startswith('CommandError: Relay from default failed'), errors
    assert f'127.0.0.1:{broker.port}' in failed.stderr, 'the error names the broker'
    assert not RELAYED.search(failed.stderr)

    relayed = relay_in(master)
    assert RELAYED.findall(relayed.stderr) == [str(CHANGED_ROWS)], relayed.stderr
    assert outbox_count(master) == 0
    replica.start('-w', '1')
    wait_equal(
        lambda: replica_names(master, MASTER_TABLE), lambda: replica_names(replica, REPLICA_TABLE)
    )
    assert len(replica_names(replica, REPLICA_TABLE)) == 35
    assert replica.stop() == 0
    assert queue_depth(broker.url, names['queue']) == 0
    assert queue_depth(broker.url, names['dead_letter_queue']) == 0


# --- d. nacks: a full queue refuses messages (x-max-length + x-overflow=reject-publish) -------

LIMIT = 10


def test_item_01d_nacked_messages_stay_in_the_outbox_until_the_queue_has_room(
    broker, names, replica_service
):
    master = master_service(replica_service, broker.url)
    replica = replica_service(url=broker.url)
    with full_queue(broker, names, LIMIT):
        created = make_changes(
            master,
            broker.url,
            'from tests.dj_master.models import SimplestModel\n'
            'for pk in range(1, 16):\n'
            "    SimplestModel.objects.create(id=pk, name=f'row {pk}')\n",
        )
        refused = created.stderr.count('CQRS message was refused by the broker')
        assert queue_depth(broker.url, names['queue']) == LIMIT
        kept = sorted(int(pk) for (pk,) in master.query(f'SELECT instance_pk FROM {OUTBOX}'))
        assert kept == list(range(LIMIT + 1, 16)), 'exactly the refused messages are kept'
        # The first refusal of each message is logged once; later refusals of the same message
        # (it is published again while the master waits at exit) only in the periodic summary.
        assert refused == 15 - LIMIT, created.stderr

    replica.start('-w', '1')
    wait_equal(
        lambda: list(range(1, LIMIT + 1)),
        lambda: [pk for pk, *_ in replica_names(replica, REPLICA_TABLE)],
    )
    relayed = relay_in(master)
    assert RELAYED.findall(relayed.stderr) == [str(15 - LIMIT)], relayed.stderr
    assert outbox_count(master) == 0
    wait_equal(
        lambda: replica_names(master, MASTER_TABLE), lambda: replica_names(replica, REPLICA_TABLE)
    )
    assert replica.stop() == 0
    assert queue_depth(broker.url, names['queue']) == 0
    assert queue_depth(broker.url, names['dead_letter_queue']) == 0


# --- e. the relay daemon stopped by SIGTERM ---------------------------------------------------


def stop_relay(relay: subprocess.Popen) -> int:
    """SIGTERM the relay daemon and return its exit code (it must stop well within 30 s)."""
    relay.send_signal(signal.SIGTERM)
    try:
        return relay.wait(30)
    except subprocess.TimeoutExpired:
        relay.kill()
        relay.wait()
        pytest.fail('cqrs_relay did not stop within 30 s of SIGTERM')


def test_item_01e_relay_daemon_stops_on_sigterm_and_loses_no_row(amqp_url, names, replica_service):
    master = master_service(replica_service, amqp_url)
    replica = replica_service().start('-w', '1')
    replica.wait_ready()
    make_changes(master, UNREACHABLE, CHANGES)
    assert outbox_count(master) == CHANGED_ROWS, 'the broker was unreachable: all rows kept'
    daemon = ('cqrs_relay', '--min-age', '0', '--batch', '20', '--interval', '60')

    # SIGTERM while the daemon waits for the database to start its first batch.
    with sqlite_write_lock(master.database.path):
        relay = master.spawn(*daemon)
        try:
            wait_for(
                lambda: handles_signal(relay.pid, signal.SIGTERM) or relay.poll() is not None,
                message='cqrs_relay handling SIGTERM',
            )
            relay.send_signal(signal.SIGTERM)
        except BaseException:
            relay.kill()
            raise
    assert stop_relay(relay) == 0, master.log()[-3000:]
    [first] = RELAYED.findall(master.log())
    print(f'the first daemon relayed {first} rows before stopping')
    assert int(first) in (0, 20), 'at most the batch in hand is finished'
    assert outbox_count(master) == CHANGED_ROWS - int(first)

    # SIGTERM while the daemon idles (60 s between polls) after relaying the rest.
    relay = master.spawn(*daemon)
    try:
        wait_for(lambda: outbox_count(master) == 0, message='the outbox relayed')
        wait_equal(
            lambda: replica_names(master, MASTER_TABLE),
            lambda: replica_names(replica, REPLICA_TABLE),
        )
    finally:
        code = stop_relay(relay)
    assert code == 0, master.log()[-3000:]
    assert [int(count) for count in RELAYED.findall(master.log())] == [
        int(first),
        CHANGED_ROWS - int(first),
    ]
    assert 'Traceback' not in master.log()
    assert replica.stop() == 0
    assert queue_depth(amqp_url, names['queue']) == 0
    assert queue_depth(amqp_url, names['dead_letter_queue']) == 0
