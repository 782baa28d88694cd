"""RabbitMQ transport under load: 10,000 messages, two workers, a worker killed mid-stream.

Slow (tens of seconds each); the lighter broker tests are in ``test_rabbitmq.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal

import pytest
from django.db import transaction

from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import SimplestModel
from tests.harness import (
    master_names,
    received_pks,
    replica_names,
    sqlite_write_lock,
    wait_for,
    worker_pids,
)

TOTAL = 10_000
BATCH = 1_000
APPLIED = re.compile(r'^\S+ \S+ (\d+) INFO CQRS is applied:', re.MULTILINE)


def publish_rows(total: int = TOTAL, first: int = 0) -> list[tuple]:
    """Create master rows ``first`` to ``total - 1``, BATCH per transaction, then update every
    10th row once more.

    Returns the master's (id, name, cqrs_revision) rows, which the replica must end up with.
    """
    for start in range(first, total, BATCH):
        with transaction.atomic():
            for pk in range(start, start + BATCH):
                SimplestModel.objects.create(id=pk, name=f'n{pk}')
    with transaction.atomic():
        for obj in SimplestModel.objects.filter(id__in=range(0, total, 10)):
            obj.name = f'updated {obj.pk}'
            obj.save()
    assert RabbitMQTransport.flush(timeout=60)
    return master_names()


@pytest.mark.django_db(transaction=True)
def test_ten_thousand_messages_land_with_two_workers_on_one_connection(
    master, names, broker, replica_service
):
    replica = replica_service().start('-w', '2')
    replica.wait_ready(2)
    master()
    RabbitMQTransport.clean_connection()
    opened = RabbitMQTransport.connections_opened()

    expected = publish_rows()

    assert RabbitMQTransport.connections_opened() - opened == 1
    assert len(expected) == TOTAL
    assert sum(revision for _, _, revision in expected) == TOTAL // 10
    wait_for(lambda: replica.count() == TOTAL, timeout=300, message=f'{TOTAL} replica rows')
    wait_for(lambda: replica_names(replica) == expected, timeout=120, message='every revision')
    assert broker.count(names['queue']) == 0
    assert broker.count(names['dead_letter_queue']) == 0
    # Both workers took part.
    assert len(set(APPLIED.findall(replica.log()))) == 2


@pytest.mark.django_db(transaction=True)
def test_sigkill_of_a_worker_mid_stream_loses_nothing(master, names, broker, replica_service):
    broker.bind_replica_queue('simplest')
    master()
    replica = replica_service().start('-w', '2')
    replica.wait_ready(2)
    workers = worker_pids(replica)
    assert len(workers) == 2

    # The first BATCH rows are applied. Then, with both workers frozen (SIGSTOP), the rest of
    # the stream is queued; they resume against a locked replica database (a slow database),
    # so the first worker is killed while it holds received, unapplied, unacknowledged
    # messages, whatever the speed of the machine.
    with transaction.atomic():
        for pk in range(BATCH):
            SimplestModel.objects.create(id=pk, name=f'n{pk}')
    assert RabbitMQTransport.flush(timeout=60)
    wait_for(lambda: replica.count() == BATCH, message=f'the first {BATCH} rows applied')
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        expected = publish_rows(first=BATCH)
        with sqlite_write_lock(replica.database.path):
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
            wait_for(
                lambda: any(pk >= BATCH for pk in received_pks(replica.log(), workers[0])),
                message='the first worker applying messages of the rest of the stream',
            )
            os.kill(workers[0], signal.SIGKILL)
            killed_at = replica.count()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(workers[1], signal.SIGCONT)
    assert killed_at == BATCH

    wait_for(
        lambda: 'exited with code' in replica.log() and len(worker_pids(replica)) == 2,
        message='the supervisor restarting the killed worker',
    )
    restarted = worker_pids(replica)
    assert workers[0] not in restarted
    assert workers[1] in restarted

    wait_for(lambda: replica.count() == TOTAL, timeout=300, message=f'{TOTAL} replica rows')
    wait_for(lambda: replica_names(replica) == expected, timeout=120, message='every revision')
    assert broker.count(names['queue']) == 0
    assert broker.count(names['dead_letter_queue']) == 0
    assert replica.process.poll() is None
