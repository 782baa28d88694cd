"""Consumer failure paths against a real broker and a real ``cqrs_consume`` (issue 14, item 1 a-b).

The master is this pytest process; the replica a ``cqrs_consume`` process with an SQLite file
of its own. Consumption is held back deterministically: the messages are queued before the
consumer starts (the test declares and binds the replica queue), and the replica's database
write lock is held by the test when a failure must happen. Every test ends with the replica
equal to the master and exact counts: applied messages, attempts, dead letters, queue depth.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import FlakyModel, SimplestModel
from tests.harness import (
    RECEIVED_SIMPLEST,
    applied_simplest,
    assert_replica_equals_master,
    sqlite_write_lock,
    wait_for,
)

FAILED_SIMPLEST = re.compile(r'CQRS is failed: pk = (\d+) \(simplest\)')
BATCH_FAILED = re.compile(r'CQRS batch of (\d+) messages failed to commit: database is locked')


# the conftest ``broker`` declares the replica queue and binds it to these routing keys
REPLICA_QUEUE_BINDINGS = ('simplest', 'flaky')


def create(pks) -> None:
    for pk in pks:
        SimplestModel.objects.create(id=pk, name=f'row {pk}')


# --- a. a burst beyond the prefetch with a failing row and a poison body ---------------------


@pytest.mark.parametrize('vendor', ['sqlite', 'postgresql'])
@pytest.mark.django_db(transaction=True)
def test_item_01a_burst_with_a_failing_row_and_a_poison_body_drains_the_queue(
    vendor, master, names, broker, replica_service
):
    # 80 messages queued before the consumer starts; it may hold 5 unacknowledged at a time
    # (prefetch = delay queue size + 1; settings_broker's consumer_prefetch_count is 50).
    master()
    create(range(1, 31))
    FlakyModel.objects.create(id=1, name='doomed', always_fail=True)
    create(range(31, 51))
    assert RabbitMQTransport.flush()
    broker.publish(b'{"signal_type": "SAVE", "cqrs_id": ', 'simplest')  # cut JSON
    create(range(51, 79))
    assert RabbitMQTransport.flush()
    wait_for(lambda: broker.count(names['queue']) == 80, message='80 queued messages')

    replica = replica_service(CQRS_TEST_DELAY_QUEUE=4, vendor=vendor).start('-w', '1')
    assert_replica_equals_master(replica)
    wait_for(
        lambda: broker.count(names['dead_letter_queue']) == 1,
        message='the failing row in the dead letters',
    )
    assert replica.stop() == 0

    # Every good message applied exactly once, the failing row tried 1 + CQRS_MAX_RETRIES (3)
    # times then dead-lettered, the poison body dropped after one log line.
    assert applied_simplest(replica) == Counter(range(1, 79))
    assert replica.query('SELECT id, attempts FROM dj_replica_flakyattempt') == [(1, 4)]
    assert replica.count('dj_replica_flakyreplica') == 0
    log = replica.log()
    assert log.count("CQRS couldn't be parsed") == 1, log[-3000:]
    assert log.count('CQRS is added to dead letter queue') == 1, log[-3000:]
    assert 'Traceback' not in log
    assert 'exited with code' not in log
    # Nothing left, not even unacknowledged (the consumer is gone: they would be back).
    assert broker.count(names['queue']) == 0
    [(routing_key, _, dead)] = broker.peek(names['dead_letter_queue'], 1)
    assert routing_key == f'cqrs.{names["dead_letter_queue"]}.flaky'
    assert (dead['cqrs_id'], dead['instance_pk'], dead['retries']) == ('flaky', 1, 3)
    wait_for(lambda: broker.count(names['dead_letter_queue']) == 1, message='the dead letter kept')


# --- b. a held SQLite write lock: the batch fails, its messages are applied one by one --------


@pytest.mark.django_db(transaction=True)
def test_item_01b_held_write_lock_makes_the_batch_fall_back_to_one_by_one(
    master, names, broker, replica_service
):
    master()
    create(range(1, 31))
    assert RabbitMQTransport.flush()
    wait_for(lambda: broker.count(names['queue']) == 30, message='30 queued messages')

    # A 5 s busy timeout instead of 30 s: the batch gives up on the lock sooner.
    replica = replica_service().extend_settings("DATABASES['default']['OPTIONS']['timeout'] = 5")
    with sqlite_write_lock(replica.database.path):
        replica.start('-w', '1')
        wait_for(
            lambda: BATCH_FAILED.search(replica.log()),
            timeout=60,
            message='a batch failing on the held lock',
        )
    # Released: the fallback applies the batch's messages one by one.
    assert_replica_equals_master(replica)
    assert replica.stop() == 0

    log = replica.log()
    [size] = BATCH_FAILED.findall(log)
    print(f'a batch of {size} messages failed to commit on the held lock')
    lines = log.splitlines()
    failed_at = next(i for i, line in enumerate(lines) if BATCH_FAILED.search(line))
    received = [int(pk) for pk in RECEIVED_SIMPLEST.findall('\n'.join(lines[:failed_at]))]
    batch = received[-int(size) :]
    assert len(batch) == int(size) >= 2, log[-3000:]
    # The batch's messages were applied by the fallback, not failed and retried later.
    assert not set(batch) & {int(pk) for pk in FAILED_SIMPLEST.findall(log)}, log[-3000:]
    assert applied_simplest(replica) == Counter(range(1, 31)), 'each message applied exactly once'
    assert 'CQRS is added to dead letter queue' not in log
    assert 'Traceback' not in log
    assert broker.count(names['queue']) == 0
    assert broker.count(names['dead_letter_queue']) == 0
