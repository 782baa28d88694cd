"""A local three-node RabbitMQ cluster of the test run's own (issue 11, item 3).

Three ``rabbitmq-server`` nodes run as the current user, each with its own node name, AMQP and
distribution ports, data and log directories (``PrivateBroker``'s approach), all sharing one
Erlang cookie (one ``HOME`` with a ``.erlang.cookie``). They start in parallel, then nodes 2
and 3 join node 1 (``rabbitmqctl stop_app / reset / join_cluster / start_app``). The default
node ``rabbit@localhost`` on 5672 is never touched.

    python -m tests.transport.cluster up     # start one, print its URLs, stop it on Ctrl-C
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.transport.private_broker import PrivateBroker, port_open

QUEUES = Path('/usr/lib/rabbitmq/bin/rabbitmq-queues')


class ClusterNode(PrivateBroker):
    """One node of a ``RabbitCluster``: a ``PrivateBroker`` with the cluster's shared cookie.

    The node runs in a process group of its own so that ``kill()`` takes the Erlang VM down
    at once (a crash, as opposed to ``stop_app()``) and the teardown leaves nothing behind.
    """

    own_process_group = True

    def __init__(self, base: Path, home: Path, index: int) -> None:
        super().__init__(base)
        self.index = index
        self.node = f'{self.node.split("@")[0]}n{index}@localhost'
        self.env.update(HOME=str(home), RABBITMQ_NODENAME=self.node)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the node's whole process group (the Erlang VM included); data is kept."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        """Stop the node (``rabbitmqctl stop``), killing it if that fails; data is kept."""
        if self.process is None:
            return
        try:
            self.ctl('stop', timeout=60)
            self.process.wait(30)
        except Exception:
            pass
        self.kill()


class RabbitCluster:
    """Start, join, administer and tear down three ``ClusterNode``s under ``base``."""

    def __init__(self, base: Path, size: int = 3) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        home = base / 'home'
        home.mkdir(exist_ok=True)
        cookie = home / '.erlang.cookie'
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        self.nodes = [ClusterNode(base / f'node{i}', home, i) for i in range(1, size + 1)]
        ports = [port for node in self.nodes for port in (node.port, node.dist_port)]
        if len(set(ports)) != len(ports):  # two random picks collided: pick again
            for node in self.nodes:
                shutil.rmtree(node.base, ignore_errors=True)
            self.__init__(base, size)

    @property
    def urls(self) -> list[str]:
        """The nodes' AMQP URLs, node 1 first."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """``CQRS['url']`` for the whole cluster: the URLs separated by ``;``."""
        return ';'.join(self.urls)

    def node_named(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.node == name)

    def start(self) -> RabbitCluster:
        """Start the nodes in parallel, join 2..n to node 1, wait for all of them running."""
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(ClusterNode.start, self.nodes))
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl('stop_app')
                node.ctl('reset')
                node.ctl('join_cluster', first.node)
                node.ctl('start_app')
            self.wait_running()
        except BaseException:
            self.teardown()
            raise
        return self

    def live_node(self) -> ClusterNode:
        """The first node whose broker app runs (to ask ``rabbitmqctl`` through)."""
        return next(node for node in self.nodes if node.running and port_open(node.port))

    def running_nodes(self, via: ClusterNode | None = None) -> list[str]:
        """Names of the running cluster members, as ``cluster_status`` of a live node says."""
        via = via or self.live_node()
        status = via.ctl('cluster_status', '--formatter', 'json')
        import json

        return sorted(json.loads(status)['running_nodes'])

    def wait_running(self, timeout: float = 120) -> None:
        """Wait until every node runs its broker app and sees all nodes as running members."""
        expected = sorted(node.node for node in self.nodes)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(
                    port_open(node.port) and self.running_nodes(node) == expected
                    for node in self.nodes
                ):
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f'the cluster did not reach {expected} running nodes')
            time.sleep(0.2)

    def ensure_running(self) -> None:
        """Bring back any node a test stopped or killed, then wait for the full cluster."""
        for node in self.nodes:
            if not node.running:
                node.start()
            elif not port_open(node.port):
                node.start_app()
        self.wait_running()

    def queue_leader(self, queue: str, vhost: str = '/') -> ClusterNode:
        """The node that hosts the leader of quorum queue ``queue``."""
        via = self.live_node()
        output = via.ctl('list_queues', '-p', vhost, 'name', 'leader', '--no-table-headers')
        for line in output.splitlines():
            name, _, leader = line.partition('\t')
            if name == queue and leader.strip():
                return self.node_named(leader.strip())
        raise RuntimeError(f'no leader for queue {queue!r} in:\n{output}')

    def queue_info(self, queue: str, vhost: str = '/') -> dict[str, str]:
        """``type``, ``leader`` and ``members`` of ``queue`` as ``rabbitmqctl`` lists them."""
        via = self.live_node()
        output = via.ctl(
            'list_queues', '-p', vhost, 'name', 'type', 'leader', 'members', '--no-table-headers'
        )
        for line in output.splitlines():
            fields = line.split('\t')
            if fields[0] == queue:
                return dict(zip(('name', 'type', 'leader', 'members'), fields, strict=False))
        raise RuntimeError(f'queue {queue!r} not found in:\n{output}')

    def active_consumers(self, queue: str, vhost: str = '/') -> list[str]:
        """The nodes of the active consumers of ``queue`` (one entry per consumer).

        A quorum queue keeps the consumers of a node that went down, inactive, until it is
        back: the ``consumer_count`` of a passive declare counts them too.
        """
        via = self.live_node()
        output = via.ctl(
            'list_consumers', '-p', vhost, 'queue_name', 'channel_pid', 'active',
            '--no-table-headers',
        )  # fmt: skip
        nodes = []
        for line in output.splitlines():
            name, channel, active = line.split('\t')
            if name == queue and active == 'true':
                nodes.append(channel.strip('<>').split('.')[0])
        return nodes

    def connection_ports(self) -> list[int]:
        """The AMQP port (so the node) of every client connection of the cluster."""
        via = self.live_node()
        output = via.ctl('list_connections', 'port', '--no-table-headers')
        return [int(port) for port in output.split()]

    def teardown(self) -> None:
        """Kill every node and remove the cluster's directories."""
        for node in self.nodes:
            try:
                node.kill()
            except Exception:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


def node_address(url: str) -> str:
    """``host:port`` of an AMQP URL (what the transports log)."""
    match = re.search(r'@([^/]+)', url)
    return match.group(1) if match else url


def main(argv: list[str]) -> int:
    if argv[:1] != ['up']:
        print(__doc__)
        return 2
    cluster = RabbitCluster(Path(tempfile.mkdtemp(prefix='cqrs-cluster-')))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    cluster.start()
    try:
        print(f'# 3-node cluster up in {time.monotonic() - started:.1f} s; Ctrl-C stops it')
        print(cluster.url, flush=True)
        while not stop.is_set():
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.teardown()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
