"""Batched apply through a real broker and a real ``cqrs_consume`` (issue 10, item 1).

The master is this pytest process; the replica a ``cqrs_consume`` process with an SQLite file
or a PostgreSQL database of its own. The messages are queued before the consumer starts (the
test declares and binds the replica queue), so that the worker takes them in large batches.
Every test ends with the replica equal to the master and exact counts.
"""

from __future__ import annotations

import re
import signal
from collections import Counter

import pytest

from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import FlakyModel, SimplestModel
from tests.harness import (
    APPLIED_SIMPLEST,
    RECEIVED_SIMPLEST,
    applied_simplest,
    assert_replica_equals_master,
    master_names,
    replica_names,
    wait_for,
    wire_body,
    write_lock,
)

VENDORS = pytest.mark.parametrize('vendor', ['sqlite', 'postgresql'])


# the conftest ``broker`` declares the replica queue and binds it to these routing keys
REPLICA_QUEUE_BINDINGS = ('simplest', 'flaky')


def wait_queued(broker, names, number: int) -> None:
    """Flush the publisher, then wait for ``number`` messages in the replica queue."""
    assert RabbitMQTransport.flush()
    wait_for(lambda: broker.count(names['queue']) == number, message=f'{number} queued messages')


# --- creates, updates, stale messages and deletes of the same pks in one batch ----------------


@VENDORS
@pytest.mark.django_db(transaction=True)
def test_item_01_mixed_messages_of_the_same_pks_in_one_batch(
    vendor, master, names, broker, replica_service
):
    master()
    messages = 0
    for pk in range(1, 41):
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
        messages += 1
    for step in (2, 3):
        for row in SimplestModel.objects.filter(id__in=range(1, 41, step)):
            row.name = f'{row.name} / {step}'
            row.save()
            messages += 1
    SimplestModel.objects.filter(id__in=range(4, 41, 4)).delete()
    messages += 10
    SimplestModel.objects.create(id=8, name='row 8 again')  # deleted, then created again
    messages += 1
    wait_queued(broker, names, messages)
    # pk 3 is at revision 1 (updated by step 2): revision 0 again is stale; pk 2 was never
    # updated: its revision 0 again is a duplicate.
    broker.publish(wire_body(3), 'simplest')
    broker.publish(wire_body(2), 'simplest')
    messages += 2
    wait_for(lambda: broker.count(names['queue']) == messages, message='all queued')

    replica = replica_service(vendor=vendor).start('-w', '1')
    wait_for(lambda: replica_names(replica) == master_names(), message='replica == master')
    assert replica.stop() == 0

    log = replica.log()
    assert log.count('CQRS is applied: pk = ') == messages
    assert 'CQRS is failed' not in log
    assert re.findall(r'Wrong CQRS sync order: .*', log) == [
        'Wrong CQRS sync order: pk = 3, cqrs_revision = new 0 / existing 1 (simplest).'
    ]
    assert re.findall(r'Received duplicate CQRS data: .*', log) == [
        'Received duplicate CQRS data: pk = 2, cqrs_revision = 0 (simplest).'
    ]
    assert 'CQRS potential creation race condition: pk = 2 (simplest).' in log
    assert broker.count(names['queue']) == 0
    assert broker.count(names['dead_letter_queue']) == 0


# --- one poison message in a batch of good ones -----------------------------------------------


@VENDORS
@pytest.mark.django_db(transaction=True)
def test_item_01_poison_message_fails_alone_the_batch_is_applied(
    vendor, master, names, broker, replica_service
):
    master()
    for pk in range(1, 16):
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
    wait_queued(broker, names, 15)
    bad_pk = wire_body(0)
    bad_pk['instance_data']['id'] = bad_pk['instance_pk'] = 'not a number'
    broker.publish(bad_pk, 'simplest')  # raises in the lookup: retried, then dead-lettered
    no_revision = wire_body(99)
    del no_revision['instance_data']['cqrs_revision']
    broker.publish(no_revision, 'simplest')  # not applicable: retried, then dead-lettered
    for pk in range(16, 31):
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
    wait_queued(broker, names, 32)

    replica = replica_service(vendor=vendor).start('-w', '1')
    assert_replica_equals_master(replica)
    wait_for(
        lambda: broker.count(names['dead_letter_queue']) == 2,
        message='the two bad messages in the dead letters',
    )
    assert replica.stop() == 0

    assert applied_simplest(replica) == Counter(range(1, 31))  # every good message applied once
    log = replica.log()
    assert log.count('CQRS is failed: pk = not a number (simplest)') == 4  # 1 + 3 retries
    assert log.count('CQRS is failed: pk = 99 (simplest)') == 4
    assert log.count('CQRS sync fields are not provided in data (simplest).') == 4
    assert log.count('CQRS is added to dead letter queue') == 2
    assert broker.count(names['queue']) == 0


# --- a model with a custom hook in the same batch as a plain one --------------------------------


@VENDORS
@pytest.mark.django_db(transaction=True)
def test_item_01_custom_hook_model_in_the_same_batch_as_a_plain_one(
    vendor, master, names, broker, replica_service
):
    master()
    for pk in range(1, 31):
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
        if pk % 10 == 0:
            # FlakyReplica.cqrs_save is overridden: applied message by message, and fails its
            # first attempt.
            FlakyModel.objects.create(id=pk, name=f'flaky {pk}', fail_times=1)
    for row in SimplestModel.objects.filter(id__lte=10):
        row.name = 'updated'
        row.save()
    wait_queued(broker, names, 43)

    replica = replica_service(vendor=vendor).start('-w', '1')
    assert_replica_equals_master(replica)
    wait_for(
        lambda: replica.count('dj_replica_flakyreplica') == 3, message='the flaky rows applied'
    )
    assert replica.stop() == 0

    assert replica_names(replica) == master_names()
    assert applied_simplest(replica) == Counter(range(1, 31)) + Counter(range(1, 11))
    assert sorted(replica.query('SELECT id, attempts FROM dj_replica_flakyattempt')) == [
        (10, 2),
        (20, 2),
        (30, 2),
    ]
    assert broker.count(names['dead_letter_queue']) == 0


# --- SIGTERM while a batch is applied -----------------------------------------------------------


@VENDORS
@pytest.mark.django_db(transaction=True)
def test_item_01_sigterm_mid_batch_finishes_the_batch_in_hand(
    vendor, master, names, broker, replica_service
):
    master()
    for pk in range(1, 301):
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
    wait_queued(broker, names, 300)

    # A delay queue of 49: the worker takes at most 50 of the 300 messages at a time (its
    # prefetch).
    replica = replica_service(vendor=vendor, CQRS_TEST_DELAY_QUEUE=49)
    with write_lock(replica):
        replica.start('-w', '1')
        # The worker logs each message of a batch as received before it writes; the lock
        # holds the write, so the batch is in hand when SIGTERM comes. On SQLite its start-up
        # purges (tombstones, lag samples) may each wait for the lock first, up to the busy
        # timeout of tests.settings_broker (30 s), then log an error: hence 2 x 30 s + 60 s.
        wait_for(lambda: RECEIVED_SIMPLEST.search(replica.log()), 120, message='a batch received')
        replica.process.send_signal(signal.SIGTERM)
        in_hand = set(RECEIVED_SIMPLEST.findall(replica.log()))
    assert replica.process.wait(30) == 0

    # The batch in hand was applied and acknowledged, and so was whatever else the worker took
    # before the stop reached it (however late that was); it stopped by itself, in time.
    log = replica.log()
    first_run = set(APPLIED_SIMPLEST.findall(log))
    assert in_hand
    assert in_hand <= first_run == set(RECEIVED_SIMPLEST.findall(log))
    assert 'did not stop; killing it' not in log
    assert len(replica_names(replica)) == len(first_run)
    assert broker.count(names['queue']) == 300 - len(first_run)

    replica.start('-w', '1')
    assert_replica_equals_master(replica)
    assert replica.stop() == 0
    assert applied_simplest(replica) == Counter(range(1, 301))  # each message applied exactly once
