"""KombuTransport against real brokers: RabbitMQ over ``amqp://`` and Redis over ``redis://``.

Every test runs a replica service (``manage.py cqrs_consume`` in a subprocess with a SQLite
database of its own) and asserts on that replica's database or on the broker's queues.
"""

from __future__ import annotations

import uuid

import pytest

from tests.dj_master.models import FlakyModel, SimplestModel
from tests.harness import (
    KOMBU,
    RABBIT,
    clean_redis,
    dead_letters,
    queue_depth,
    replica_names,
    sqlite_write_lock,
    wait_for,
)

SIMPLEST = 'dj_replica_simplestreplica'
FLAKY = 'dj_replica_flakyreplica'
FLAKY_ATTEMPT = 'dj_replica_flakyattempt'


@pytest.fixture
def redis_names(names, redis_url):
    """``names`` for a Redis test, with its Redis keys removed afterwards."""
    yield names
    clean_redis(redis_url, names)


def _attempts(replica, pk):
    rows = replica.query(f'SELECT attempts FROM {FLAKY_ATTEMPT} WHERE id = ?', (pk,))
    return rows[0][0] if rows else 0


@pytest.mark.django_db(transaction=True)
def test_save_update_delete_reach_replica(master, replica_service, kombu_url):
    replica = replica_service(transport=KOMBU, url=kombu_url).start('-w', '1')
    replica.wait_ready()
    master(transport=KOMBU, url=kombu_url)

    instance = SimplestModel.objects.create(id=1, name='first')
    wait_for(lambda: replica_names(replica) == [(1, 'first', 0)], message='created replica row')

    instance.name = 'second'
    instance.save()
    wait_for(lambda: replica_names(replica) == [(1, 'second', 1)], message='updated replica row')

    instance.delete()
    wait_for(lambda: replica.count() == 0, message='deleted replica row')


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ('master_transport', 'replica_transport'),
    [(RABBIT, KOMBU), (KOMBU, RABBIT)],
    ids=['rabbit-to-kombu', 'kombu-to-rabbit'],
)
def test_rabbitmq_and_kombu_transports_interoperate(
    master, replica_service, amqp_url, master_transport, replica_transport
):
    replica = replica_service(transport=replica_transport, url=amqp_url).start('-w', '1')
    replica.wait_ready()
    master(transport=master_transport, url=amqp_url)

    instance = SimplestModel.objects.create(id=1, name='first')
    wait_for(lambda: replica_names(replica) == [(1, 'first', 0)], message='created replica row')
    instance.name = 'second'
    instance.save()
    wait_for(lambda: replica_names(replica) == [(1, 'second', 1)], message='updated replica row')

    # A SYNC to the replica's own queue uses the cqrs.<queue>.<cqrs_id> routing key.
    replica.execute(f'DELETE FROM {SIMPLEST}')
    assert instance.cqrs_sync(queue=replica.env['CQRS_TEST_QUEUE'])
    wait_for(lambda: replica_names(replica) == [(1, 'second', 1)], message='synced replica row')

    instance.delete()
    wait_for(lambda: replica.count() == 0, message='deleted replica row')


@pytest.mark.django_db(transaction=True)
def test_queue_declared_by_one_transport_is_consumed_by_the_other(
    master, replica_service, amqp_url
):
    """Switching a replica from one transport to the other keeps working on the same queue."""
    first = replica_service(transport=RABBIT, url=amqp_url).start('-w', '1')
    first.wait_ready()
    first.stop()
    master(transport=RABBIT, url=amqp_url)
    SimplestModel.objects.create(id=1, name='queued while down')

    second = replica_service(transport=KOMBU, url=amqp_url).start('-w', '1')
    wait_for(lambda: second.count() == 1, message=f'queued message applied ({second.log()})')
    assert 'PRECONDITION_FAILED' not in second.log()


@pytest.mark.django_db(transaction=True)
def test_sync_to_one_queue_reaches_only_that_replica(
    master, replica_service, redis_url, redis_names
):
    other_queue = f'other_{uuid.uuid4().hex[:10]}'
    target = replica_service(transport=KOMBU, url=redis_url).start('-w', '1')
    other = replica_service(transport=KOMBU, url=redis_url, queue=other_queue).start('-w', '1')
    target.wait_ready()
    other.wait_ready()
    master(transport=KOMBU, url=redis_url)

    instance = SimplestModel.objects.create(id=1, name='first')
    for replica in (target, other):
        wait_for(lambda r=replica: r.count() == 1, message='broadcast row on both replicas')
        replica.execute(f'DELETE FROM {SIMPLEST}')

    assert instance.cqrs_sync(queue=redis_names['queue'])
    wait_for(lambda: replica_names(target) == [(1, 'first', 0)], message='synced row on the target')

    # A later broadcast is queued behind the SYNC had it been routed to the other replica too.
    SimplestModel.objects.create(id=2, name='second')
    wait_for(lambda: target.count() == 2, message='broadcast row on the target')
    wait_for(lambda: other.count() == 1, message='broadcast row on the other replica')
    assert replica_names(other) == [(2, 'second', 0)]


@pytest.mark.django_db(transaction=True)
def test_retries_then_dead_letter(master, replica_service, kombu_url, amqp_url, names):
    replica = replica_service(transport=KOMBU, url=kombu_url, CQRS_TEST_MAX_RETRIES=3)
    replica.start('-w', '1').wait_ready()
    master(transport=KOMBU, url=kombu_url)

    FlakyModel.objects.create(id=1, name='flaky', fail_times=2)
    wait_for(lambda: replica.count(FLAKY) == 1, message=f'flaky row applied ({replica.log()})')
    assert _attempts(replica, 1) == 3

    FlakyModel.objects.create(id=2, name='doomed', always_fail=True)
    if kombu_url.startswith('redis'):
        count = lambda: queue_depth(kombu_url, names['dead_letter_queue'])  # noqa: E731
    else:
        count = lambda: queue_depth(amqp_url, names['dead_letter_queue'])  # noqa: E731
    wait_for(lambda: count() == 1, message=f'one dead letter ({replica.log()[-3000:]})')
    assert _attempts(replica, 2) == 4  # the first attempt and CQRS_MAX_RETRIES = 3 retries
    assert replica.query(f'SELECT id FROM {FLAKY}') == [(1,)]
    assert 'is added to dead letter queue: pk = 2 (flaky)' in replica.log()
    [(body, expiration)] = dead_letters(kombu_url, amqp_url, names['dead_letter_queue'])
    assert (body['cqrs_id'], body['instance_pk'], body['retries']) == ('flaky', 2, 3)
    assert expiration == '864000000'  # dead_message_ttl (10 days) in milliseconds


@pytest.mark.django_db(transaction=True)
def test_consumer_prefetch_count_is_applied(master, replica_service, names, amqp_url):
    """With consumption held back, the broker hands the worker exactly the prefetch count."""
    replica = replica_service(transport=KOMBU)
    replica.extend_settings("CQRS['consumer_prefetch_count'] = 7").start('-w', '1')
    replica.wait_ready()
    master()

    with sqlite_write_lock(replica.database.path):
        for pk in range(1, 21):
            SimplestModel.objects.create(id=pk, name=f'row {pk}')
        wait_for(
            lambda: queue_depth(amqp_url, names['queue']) == 20 - 7,
            message='7 messages in flight and 13 ready',
        )
    wait_for(lambda: replica.count() == 20, message='the 20 rows on the replica')
    assert queue_depth(amqp_url, names['queue']) == 0
