"""Issue 11, item 3: master and replica on a local 3-node RabbitMQ cluster, nodes going away.

The cluster is ``rabbit_cluster`` (``tests/transport/cluster.py``): three private nodes on
ports of their own, joined with ``rabbitmqctl join_cluster``. ``CQRS['url']`` lists the three
nodes separated by ``;`` (node 1 first) for both sides. The master is this pytest process; the
replica is a real ``cqrs_consume`` process (``ReplicaService``) with an SQLite database.

Every test uses quorum queues (``CQRS['replica']['queue_type'] = 'quorum'``), as an operator
of a cluster does: a classic queue lives on one node, so when that node goes away the queue
(and what it holds) goes with it, and no client failover can help. A quorum queue is
replicated on the three nodes and keeps working, with a new leader, while one of them is
down; the clients connected to the lost node must move to another node (failover) and the
publisher must send again what the lost node had not confirmed.

The faults are triggered from the writing loop after a fixed number of saves, never by timing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import pytest

from dj_cqrs.models import CQRSOutboxMessage
from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import SimplestModel
from tests.harness import (
    assert_replica_equals_master,
    outbox_on,
    relay_outbox,
    wait_for,
)

QUORUM = "CQRS['replica']['queue_type'] = 'quorum'"


@pytest.fixture
def cluster(rabbit_cluster):
    """The session's cluster with its three nodes running, before and after the test.

    The publisher of this process starts from node 1 (the first URL): ``clean_connection()``
    makes its next connection try the nodes from the first one again.
    """
    rabbit_cluster.ensure_running()
    RabbitMQTransport.clean_connection()
    yield rabbit_cluster
    rabbit_cluster.ensure_running()


def write_changes(changes: int, at: dict[int, Callable[[], None]]) -> int:
    """Save ``changes`` changes: every fifth one updates an earlier row, the others create.

    Every save runs outside a transaction, so it is published at once. ``at[n]`` is called
    just before the ``n``-th save. Returns the number of saves done; a raising save fails
    the test. The caller then waits for the broker's confirms (``RabbitMQTransport.flush``), as the
    master process does at exit: the publisher sends a message the broker refused (a quorum
    queue without a leader for a moment) again with its next publish or flush.
    """
    created: list[int] = []
    saves = 0
    while saves < changes:
        if saves in at:
            at[saves]()
        if saves % 5 == 4:
            row = SimplestModel.objects.get(id=created[len(created) // 2])
            row.name = f'{row.name} updated'
            row.save()
        else:
            pk = len(created) + 1
            SimplestModel.objects.create(id=pk, name=f'row {pk}')
            created.append(pk)
        saves += 1
    return saves


def in_background(action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` (a node stop / start) in a thread while the master keeps writing."""
    errors: list[BaseException] = []

    def run():
        try:
            action()
        except BaseException as error:  # re-raised by join()
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors
    thread.start()
    return thread


def join(thread: threading.Thread) -> None:
    thread.join(180)
    assert not thread.is_alive(), 'the node operation did not finish'
    if thread.errors:
        raise thread.errors[0]


def quorum_replica(replica_service, cluster, url: str | None = None, workers: int = 1):
    replica = replica_service(url=url or cluster.url).extend_settings(QUORUM)
    replica.start('-w', str(workers))
    replica.wait_ready(workers, timeout=60)
    return replica


@pytest.mark.parametrize('outbox', [False, True], ids=['confirms', 'outbox'])
@pytest.mark.django_db(transaction=True)
def test_item_03_master_writes_3000_changes_while_the_node_both_sides_use_restarts(
    outbox, cluster, master, names, replica_service
):
    """Node 1 (first in the URL list, used by master and replica) stops after 1,000 saves and
    starts again after 2,000, while the master keeps saving: no save raises, and the replica
    ends equal to the master. Without the outbox, the publisher's confirms and its re-send on
    the next node are what keeps every change; with the outbox on, ``cqrs_relay --once``
    sends whatever the publisher could not."""
    master(url=cluster.url, queue_type='quorum')
    replica = quorum_replica(replica_service, cluster)
    first = cluster.nodes[0]
    assert cluster.queue_info(names['queue'])['type'] == 'quorum'
    assert first.port in cluster.connection_ports(), 'both sides start on node 1'

    threads: dict[str, threading.Thread] = {}

    def restart_node():
        join(threads['stop'])
        threads['start'] = in_background(first.start_app)

    with outbox_on() if outbox else contextlib.nullcontext():
        saves = write_changes(
            3000,
            at={
                1000: lambda: threads.setdefault('stop', in_background(first.stop_app)),
                2000: restart_node,
            },
        )
        join(threads['start'])
        assert saves == 3000
        assert RabbitMQTransport.flush(timeout=90), 'the broker confirmed every change'
        if outbox:
            print(relay_outbox())
        assert_replica_equals_master(replica, timeout=120)
        if outbox:
            assert CQRSOutboxMessage.objects.count() == 0, 'every outbox row was sent'

    log = replica.log()
    assert 'exited with code' not in log, log[-3000:]
    assert replica.process.poll() is None
    consumers = wait_for(
        lambda: len(nodes := cluster.active_consumers(names['queue'])) == 1 and nodes,
        message=lambda: f'the consumer back: {cluster.active_consumers(names["queue"])}',
    )
    assert consumers != [first.node], 'the consumer moved to another node'


@pytest.mark.parametrize('leader_on', ['replica_node', 'both_sides_node'])
@pytest.mark.django_db(transaction=True)
def test_item_03_two_workers_on_a_quorum_queue_survive_the_loss_of_its_leader_node(
    leader_on, cluster, master, names, replica_service
):
    """``cqrs_consume -w 2`` on a quorum queue: the node hosting the queue's leader is killed
    (SIGKILL of the Erlang VM) while messages flow; a new leader takes over, the workers move
    to a live node, and the replica ends equal to the master.

    The replica declares the queue, so its leader starts on the replica's first node. With
    ``replica_node`` the replica lists the nodes from node 2 on: the killed leader's node is
    the workers' node, the master (node 1) keeps its connection and its publishes wait for the
    new leader. With ``both_sides_node`` both sides list node 1 first: the master loses its
    node too, with messages the dead node never confirmed, and its first publishes on node 2
    reach the queue before its new leader: refused. RabbitMQ 3.10 then refuses every later
    publish of that channel; the publisher sends refused messages again on a new channel
    (docs/transports.md, "Refused publishes after the loss of a quorum queue's leader")."""
    master(url=cluster.url, queue_type='quorum')
    urls = cluster.urls
    replica_urls = urls[1:] + urls[:1] if leader_on == 'replica_node' else urls
    replica = quorum_replica(replica_service, cluster, ';'.join(replica_urls), workers=2)
    queue, dead_letter_queue = names['queue'], f'dead_letter_{names["queue"]}'
    assert cluster.queue_info(queue)['type'] == 'quorum'
    assert cluster.queue_info(dead_letter_queue)['type'] == 'quorum'
    assert len(cluster.queue_info(queue)['members'].split(',')) == 3
    leader = cluster.queue_leader(queue)
    assert leader.url == replica_urls[0]
    lost: dict[str, str] = {}

    def kill_leader():
        wait_for(lambda: replica.count() >= 200, message='the replica applying messages')
        assert leader.port in cluster.connection_ports()
        lost['leader'] = leader.node
        leader.kill()

    saves = write_changes(1500, at={600: kill_leader})
    assert saves == 1500
    assert RabbitMQTransport.flush(timeout=90), 'the broker confirmed every change'

    def new_leader():
        with contextlib.suppress(RuntimeError):
            return cluster.queue_leader(queue).node != lost['leader']

    wait_for(new_leader, message='a new leader of the queue')
    assert_replica_equals_master(replica, timeout=120)

    log = replica.log()
    assert 'exited with code' not in log, log[-3000:]
    assert replica.process.poll() is None
    consumers = wait_for(
        lambda: len(nodes := cluster.active_consumers(queue)) == 2 and nodes,
        message=lambda: f'both workers consuming again: {cluster.active_consumers(queue)}',
    )
    assert lost['leader'] not in consumers
    started = time.monotonic()
    cluster.ensure_running()
    print(f'the killed node rejoined in {time.monotonic() - started:.1f} s')
    assert cluster.queue_info(queue)['type'] == 'quorum'
