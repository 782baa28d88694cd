"""Issue 12, item 2: the metrics endpoint of a running ``cqrs_consume -w 2 --metrics-port``.

The master is this pytest process publishing to RabbitMQ; the replica a ``cqrs_consume``
process with two workers. After known traffic (saves, a delete, a row that fails once, a row
that always fails, a poison body, a stale revision) the endpoint is scraped and the counters,
summed over the two workers by the supervisor, are checked exactly; they survive a worker
killed and started again.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import FlakyModel, SimplestModel
from tests.harness import free_port, wait_for

STARTED = re.compile(r'CQRS consumer: worker (\d+) started \(pid (\d+)\)')


def scrape(port: int) -> dict[tuple, float]:
    """The samples of the endpoint: ``{(name, sorted label items): value}``."""
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=10) as response:
        assert response.headers['Content-Type'].startswith('text/plain')
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def consumed(samples: dict, cqrs_id: str, signal_type: str, outcome: str) -> float:
    labels = (('cqrs_id', cqrs_id), ('outcome', outcome), ('signal_type', signal_type))
    return samples.get(('cqrs_consumed_messages_total', labels), 0)


EXPECTED = {
    ('simplest', 'SAVE', 'applied'): 20,
    ('simplest', 'DELETE', 'applied'): 1,
    ('simplest', 'SAVE', 'stale'): 1,
    ('', '', 'rejected'): 1,
    ('flaky', 'SAVE', 'applied'): 1,
    ('flaky', 'SAVE', 'retried'): 1 + 3,  # pk 2 once; pk 1 at retries 0, 1 and 2
    ('flaky', 'SAVE', 'dead_lettered'): 1,  # pk 1 at retries 3 (CQRS_MAX_RETRIES)
}


def counters(samples: dict) -> dict:
    return {key: consumed(samples, *key) for key in EXPECTED}


@pytest.mark.django_db(transaction=True)
def test_item_02_scrape_of_cqrs_consume_w2_after_known_traffic(
    master, names, broker, replica_service
):
    master()
    port = free_port()
    replica = replica_service().start('-w', '2', '--metrics-port', str(port))
    replica.wait_ready(2)
    samples = scrape(port)
    assert counters(samples) == dict.fromkeys(EXPECTED, 0)

    for pk in range(1, 21):
        SimplestModel.objects.create(id=pk, name=f'row {pk}')
    FlakyModel.objects.create(id=1, name='doomed', always_fail=True)
    FlakyModel.objects.create(id=2, name='once', fail_times=1)
    assert RabbitMQTransport.flush()
    broker.publish(b'{"signal_type": "SAVE", "cqrs_id": ', 'simplest')  # cut JSON
    wait_for(lambda: replica.count() == 20, message='20 replica rows')
    # Deleted once its save is applied (the two workers may apply a save and a delete of one
    # row in either order; the save would then be stale).
    SimplestModel.objects.get(id=20).delete()
    wait_for(lambda: replica.count() == 19, message='19 replica rows')
    wait_for(
        lambda: broker.count(names['dead_letter_queue']) == 1,
        message='the failing row in the dead letters',
    )
    # Revision 0 of pk 1 again: the replica has it already.
    stale = SimplestModel.objects.get(id=1).to_cqrs_dict()
    stale['cqrs_revision'] = 0
    broker.publish(
        {'signal_type': 'SAVE', 'cqrs_id': 'simplest', 'instance_data': stale, 'instance_pk': 1},
        'simplest',
    )

    wait_for(lambda: counters(scrape(port)) == EXPECTED, message=lambda: counters(scrape(port)))
    samples = scrape(port)
    # One apply time and lag observation per applied or stale message; at least one batch.
    for cqrs_id, applied in (('simplest', 22), ('flaky', 1)):
        labels = (('cqrs_id', cqrs_id),)
        assert samples[('cqrs_apply_duration_seconds_count', labels)] == applied
        assert samples[('cqrs_replication_lag_seconds_count', labels)] == applied
    batches = samples[('cqrs_consume_batch_size_count', ())]
    assert 1 <= batches <= 22 + 1 + 1 + 4
    assert samples[('cqrs_consume_batch_size_sum', ())] == 22 + 1 + 1 + 4

    # A worker killed: its counts stay in the sum, the new worker adds to it.
    log = replica.log()
    pid = int(STARTED.findall(log)[0][1])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: 'exited with code' in replica.log(), message='the worker restarted')
    replica.wait_ready(3)
    assert counters(scrape(port)) == EXPECTED
    SimplestModel.objects.create(id=21, name='after the restart')
    assert RabbitMQTransport.flush()
    wait_for(
        lambda: consumed(scrape(port), 'simplest', 'SAVE', 'applied') == 21,
        message=lambda: counters(scrape(port)),
    )
    assert replica.stop() == 0
    assert 'Traceback' not in replica.log()


def test_item_02_metrics_port_in_use_is_a_command_error(replica_service):
    with socket.socket() as taken:
        taken.bind(('', 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = replica_service().manage('cqrs_consume', '--metrics-port', str(port), check=False)
    assert result.returncode == 1
    assert f'CommandError: Cannot serve metrics on port {port}' in result.stderr
