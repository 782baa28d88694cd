"""Issue 11, item 4: no resurrected rows, through a real ``cqrs_consume`` on RabbitMQ.

Messages are hand-published with pika to the replica queue of a running consumer: a DELETE,
then late SAVE / SYNC messages of the deleted row (a retry, a redelivery, a ``cqrs_sync``
racing the delete), then the row created again on the master (revision 0, later
``cqrs_updated``). With two workers the broker hands the messages out to both in turn, so a
DELETE and the SAVEs before it are applied in any order.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from tests.harness import SIMPLEST, instance_data, wait_for, wire_body

T0 = '2024-05-01 10:00:00+00:00'  # the row's saves
T1 = '2024-05-01 10:00:05+00:00'  # its deletion on the master
T2 = '2024-05-01 11:00:00+00:00'  # created again
APPLIED = 'CQRS is applied: pk = {} (simplest)'


def publish_row(broker, signal_type: str, pk: int, revision: int, updated: str) -> None:
    """Hand-publish a SAVE / SYNC (row named after its pk, revision and time) or a DELETE."""
    fields = {} if signal_type == 'DELETE' else {'name': f'{pk} r{revision} {updated[11:19]}'}
    data = instance_data(pk, revision, updated, **fields)
    broker.publish(wire_body(pk, signal_type=signal_type, instance_data=data), 'simplest')


def applied(replica, count: int) -> None:
    wait_for(
        lambda: replica.log().count('CQRS is applied: pk = ') >= count,
        message=lambda: f'{count} messages applied (log: {replica.log()[-2000:]})',
    )


def rows(replica) -> dict[int, str]:
    return dict(replica.query(f'SELECT id, name FROM {SIMPLEST}'))


def graves(replica) -> list[tuple]:
    return sorted(replica.query('SELECT instance_pk, cqrs_revision FROM dj_cqrs_tombstone'))


def test_item_04_delete_then_late_save_then_recreate_one_worker(names, broker, replica_service):
    replica = replica_service().start('-w', '1')
    replica.wait_ready()

    publish_row(broker, 'SAVE', 7, 0, T0)
    publish_row(broker, 'SAVE', 7, 1, T0)
    publish_row(broker, 'DELETE', 7, 2, T1)
    publish_row(broker, 'SAVE', 7, 1, T0)  # a redelivery of the last save: late
    publish_row(broker, 'SYNC', 7, 1, T0)  # a cqrs_sync that read the row before the delete
    applied(replica, 5)
    assert rows(replica) == {}
    assert graves(replica) == [('7', 2)]
    assert replica.log().count('CQRS data of a deleted instance is dropped: pk = 7') == 2

    publish_row(broker, 'SAVE', 7, 0, T2)  # the master created the row again
    applied(replica, 6)
    assert rows(replica) == {7: '7 r0 11:00:00'}
    assert graves(replica) == []
    assert replica.stop() == 0
    assert 'CQRS is failed' not in replica.log()
    assert broker.count(names['queue']) == 0
    assert broker.count(names['dead_letter_queue']) == 0


@pytest.mark.parametrize('vendor', ['sqlite', 'postgresql'])
def test_item_04_two_workers_deleted_rows_stay_deleted_then_come_back(
    names, broker, replica_service, vendor
):
    # Prefetch 2 per worker: the two workers share every stretch of the stream.
    replica = replica_service(vendor=vendor, CQRS_TEST_DELAY_QUEUE=1).start('-w', '2')
    replica.wait_ready(workers=2)
    pks = range(1, 151)
    for pk in pks:
        publish_row(broker, 'SAVE', pk, 0, T0)
        publish_row(broker, 'DELETE', pk, 1, T1)
        publish_row(broker, 'SAVE', pk, 0, T0)  # late: whichever worker applies it
    applied(replica, 3 * len(pks))
    assert rows(replica) == {}
    assert graves(replica) == [(str(pk), 1) for pk in sorted(pks, key=str)]

    again = [pk for pk in pks if pk % 3 == 0]
    for pk in again:
        publish_row(broker, 'SAVE', pk, 0, T2)
    applied(replica, 3 * len(pks) + len(again))
    assert sorted(rows(replica)) == again
    assert len(graves(replica)) == len(pks) - len(again)
    assert replica.stop() == 0
    assert broker.count(names['dead_letter_queue']) == 0


def test_item_04_tombstones_off_keeps_the_old_behaviour(names, broker, replica_service):
    replica = replica_service().extend_settings("CQRS['replica']['tombstone_ttl'] = None")
    replica.start('-w', '1').wait_ready()

    publish_row(broker, 'SAVE', 7, 0, T0)
    publish_row(broker, 'DELETE', 7, 1, T1)
    publish_row(broker, 'SAVE', 7, 0, T0)
    applied(replica, 3)
    assert rows(replica) == {7: '7 r0 10:00:00'}  # resurrected, as without tombstones
    assert graves(replica) == []
    assert replica.stop() == 0


def test_item_04_worker_purges_old_tombstones(names, broker, replica_service):
    replica = replica_service().extend_settings("CQRS['replica']['tombstone_ttl'] = 3600")
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # as Django stores it in SQLite
    with sqlite3.connect(replica.database.path) as connection:
        connection.executemany(
            'INSERT INTO dj_cqrs_tombstone (cqrs_id, instance_pk, cqrs_revision, cqrs_updated, '
            'created) VALUES (?, ?, 1, ?, ?)',
            [
                ('simplest', '1', T1, str(now - timedelta(hours=2))),
                ('simplest', '2', T1, str(now - timedelta(minutes=10))),
            ],
        )
    replica.start('-w', '1').wait_ready()

    wait_for(lambda: graves(replica) == [('2', 1)], message='the old tombstone purged')
    # The purged one no longer protects its row: a late SAVE creates it (the TTL's limit).
    publish_row(broker, 'SAVE', 1, 0, T0)
    publish_row(broker, 'SAVE', 2, 0, T0)
    applied(replica, 2)
    assert sorted(rows(replica)) == [1]
    assert replica.stop() == 0
