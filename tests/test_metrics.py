"""Issue 12, item 2: Prometheus metrics of the replica workers and of the master.

The worker is driven directly (``Worker.handle_batch`` with in-memory ack / publish), the master
through the ``LoopbackTransport``; each test records into a registry of its own. The scrape of a
running ``cqrs_consume -w 2 --metrics-port`` is in tests/transport/test_metrics_broker.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import prometheus_client
import pytest
import ujson
from django.test import RequestFactory
from django.utils import timezone
from prometheus_client import CollectorRegistry

from dj_cqrs import metrics, outbox
from dj_cqrs.constants import SignalType
from dj_cqrs.controller import consumer
from dj_cqrs.models import CQRSOutboxMessage
from dj_cqrs.transport._consuming import Delivery
from dj_cqrs.transport.loopback import LoopbackTransport
from tests import harness
from tests.dj_master.models import SimplestModel
from tests.dj_replica.models import DBErrorReplica, SimplestReplica
from tests.harness import ROOT, instance_data, payload

CONSUMED = 'cqrs_consumed_messages_total'


@pytest.fixture
def replica_registry(monkeypatch):
    registry = CollectorRegistry()
    monkeypatch.setattr(metrics, 'replica', metrics.ReplicaMetrics(registry))
    return registry


@pytest.fixture
def master_registry(monkeypatch):
    registry = CollectorRegistry()
    monkeypatch.setattr(metrics, 'master', metrics.MasterMetrics(registry))
    return registry


def body(signal_type, cqrs_id, pk, rev=0, updated=None, retries=0, expires=None, **fields):
    """A wire body of row ``pk`` named ``n<pk>``, updated ``updated`` (default: now)."""
    data = instance_data(pk, rev, str(updated or timezone.now()), **{'name': f'n{pk}', **fields})
    message = payload(signal_type, cqrs_id, data, retries=retries, expires=expires)
    return ujson.dumps(message.to_dict())


def consumed(registry, cqrs_id, signal_type, outcome):
    labels = {'cqrs_id': cqrs_id, 'signal_type': signal_type, 'outcome': outcome}
    return registry.get_sample_value(CONSUMED, labels) or 0


def deliveries(*bodies):
    return [Delivery(b, 'rk', f'tag-{i}') for i, b in enumerate(bodies)]


@pytest.mark.django_db(transaction=True)
def test_item_02_worker_counts_every_outcome_of_a_batch(replica_registry):
    SimplestReplica.objects.create(id=9, name='kept', cqrs_revision=5, cqrs_updated=timezone.now())
    DBErrorReplica.ATTEMPTS.clear()
    expired = timezone.now() - timedelta(hours=1)
    lagging = timezone.now() - timedelta(seconds=30)
    w, sent = harness.recording_worker()
    w.handle_batch(
        deliveries(
            body(SignalType.SAVE, 'simplest', 1, updated=lagging),
            body(SignalType.SAVE, 'simplest', 2, updated=lagging),
            body(SignalType.SYNC, 'simplest', 3, updated=lagging),
            body(SignalType.SAVE, 'simplest', 9, rev=4),  # stale: the replica has revision 5
            body(SignalType.DELETE, 'simplest', 2, rev=1),
            b'{not json',  # rejected
            body(SignalType.SAVE, 'db_error', 20, fail_times=99),  # retried
            body(SignalType.SAVE, 'db_error', 21, fail_times=99, retries=30),  # dead letter
            body(SignalType.SAVE, 'simplest', 4, expires=expired),  # expired: dead letter
        )
    )
    r = replica_registry
    assert consumed(r, 'simplest', 'SAVE', 'applied') == 2
    assert consumed(r, 'simplest', 'SYNC', 'applied') == 1
    assert consumed(r, 'simplest', 'DELETE', 'applied') == 1
    assert consumed(r, 'simplest', 'SAVE', 'stale') == 1
    assert consumed(r, '', '', 'rejected') == 1
    assert consumed(r, 'db_error', 'SAVE', 'retried') == 1
    assert consumed(r, 'db_error', 'SAVE', 'dead_lettered') == 1
    assert consumed(r, 'simplest', 'SAVE', 'dead_lettered') == 1
    assert len(sent.rejected) == 1 and len(sent.acked) == 7
    # One batch of the 7 messages that reached the database.
    assert r.get_sample_value('cqrs_consume_batch_size_count') == 1
    assert r.get_sample_value('cqrs_consume_batch_size_sum') == 7
    # Apply time and lag: one observation per applied (or stale) message.
    apply_count = 'cqrs_apply_duration_seconds_count'
    assert r.get_sample_value(apply_count, {'cqrs_id': 'simplest'}) == 5
    assert r.get_sample_value(apply_count, {'cqrs_id': 'db_error'}) is None
    lag = {'cqrs_id': 'simplest'}
    assert r.get_sample_value('cqrs_replication_lag_seconds_count', lag) == 5
    # Three messages are 30 s old: above the 10 s bucket, within the 30 s one... at least.
    assert r.get_sample_value('cqrs_replication_lag_seconds_bucket', {**lag, 'le': '10.0'}) == 2
    assert r.get_sample_value('cqrs_replication_lag_seconds_sum', lag) >= 90


@pytest.mark.django_db(transaction=True)
def test_item_02_single_message_stale_and_tombstone_stale(replica_registry, settings):
    SimplestReplica.objects.create(id=9, name='kept', cqrs_revision=5, cqrs_updated=timezone.now())
    w, _ = harness.recording_worker()
    w.handle_batch(deliveries(body(SignalType.SAVE, 'simplest', 9, rev=5)))  # duplicate
    w.handle_batch(deliveries(body(SignalType.DELETE, 'simplest', 9, rev=6)))
    before = timezone.now() - timedelta(hours=1)
    w.handle_batch(deliveries(body(SignalType.SYNC, 'simplest', 9, rev=3, updated=before)))
    r = replica_registry
    assert consumed(r, 'simplest', 'SAVE', 'stale') == 1
    assert consumed(r, 'simplest', 'SAVE', 'applied') == 0
    assert consumed(r, 'simplest', 'DELETE', 'applied') == 1
    assert consumed(r, 'simplest', 'SYNC', 'stale') == 1
    assert r.get_sample_value('cqrs_consume_batch_size_count') == 3


@pytest.mark.django_db(transaction=True)
def test_item_02_stale_is_counted_once_when_the_batch_is_applied_again(
    replica_registry, monkeypatch
):
    """The batch's transaction fails to commit: its messages are applied again one by one; the
    stale message of the rolled-back attempt is not counted twice."""
    SimplestReplica.objects.create(id=9, name='kept', cqrs_revision=5, cqrs_updated=timezone.now())
    real = consumer.consume_batch
    calls = []

    def failing_commit(payloads):
        calls.append(len(payloads))
        real(payloads)
        raise RuntimeError('commit failed')

    monkeypatch.setattr(consumer, 'consume_batch', failing_commit)
    w, sent = harness.recording_worker()
    w.handle_batch(
        deliveries(
            body(SignalType.SAVE, 'simplest', 9, rev=2),
            body(SignalType.SAVE, 'simplest', 10),
        )
    )
    assert calls == [2]
    assert consumed(replica_registry, 'simplest', 'SAVE', 'stale') == 1
    assert consumed(replica_registry, 'simplest', 'SAVE', 'applied') == 1
    assert len(sent.acked) == 2


@pytest.mark.django_db(databases='__all__')
def test_item_02_metric_and_label_names(replica_registry, master_registry):
    names = {
        metric.name: metric
        for registry in (replica_registry, master_registry)
        for metric in registry.collect()
    }
    assert (
        set(names)
        == {
            'cqrs_consumed_messages',
            'cqrs_apply_duration_seconds',
            'cqrs_replication_lag_seconds',
            'cqrs_consume_batch_size',
            'cqrs_published_messages',
            'cqrs_confirmed_messages',
            'cqrs_failed_messages',
            'cqrs_relayed_messages',
            'cqrs_outbox_backlog_messages',
            'cqrs_outbox_oldest_age_seconds',
        }
        or names
    )
    replica = metrics.replica
    master = metrics.master
    assert replica.messages._labelnames == ('cqrs_id', 'signal_type', 'outcome')
    assert replica.apply_duration._labelnames == ('cqrs_id',)
    assert replica.lag._labelnames == ('cqrs_id',)
    assert replica.batch_size._labelnames == ()
    assert master.published._labelnames == ('cqrs_id', 'signal_type')
    for counter in (master.confirmed, master.failed, master.relayed):
        assert counter._labelnames == ('cqrs_id',)
    assert names['cqrs_consumed_messages'].type == 'counter'
    assert names['cqrs_replication_lag_seconds'].type == 'histogram'
    assert names['cqrs_outbox_backlog_messages'].type == 'gauge'


def test_item_02_observe_many_matches_observe():
    registry = CollectorRegistry()
    one = prometheus_client.Histogram('one', 'h', buckets=(1, 2, 5), registry=registry)
    many = prometheus_client.Histogram('many', 'h', buckets=(1, 2, 5), registry=registry)
    values = [0.5, 1, 1.5, 2, 4.9, 5, 7, 100]
    for value in values:
        one.observe(value)
    metrics._observe_many(many, values)
    for le in ('1.0', '2.0', '5.0', '+Inf'):
        assert registry.get_sample_value('one_bucket', {'le': le}) == registry.get_sample_value(
            'many_bucket', {'le': le}
        )
    assert registry.get_sample_value('many_sum') == sum(values)


# --- master -------------------------------------------------------------------------------------


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0


@pytest.mark.django_db(transaction=True, databases='__all__')
def test_item_02_master_counts_published_and_confirmed_through_loopback(master_registry):
    for pk in (1, 2, 3):
        SimplestModel.objects.create(id=pk, name=f'n{pk}')
    SimplestModel.objects.get(id=1).delete()
    r = master_registry
    assert sample(r, 'cqrs_published_messages_total', cqrs_id='simplest', signal_type='SAVE') == 3
    assert sample(r, 'cqrs_published_messages_total', cqrs_id='simplest', signal_type='DELETE') == 1
    assert sample(r, 'cqrs_confirmed_messages_total', cqrs_id='simplest') == 4
    assert sample(r, 'cqrs_failed_messages_total', cqrs_id='simplest') == 0
    assert SimplestReplica.objects.count() == 2


@pytest.mark.django_db(transaction=True, databases='__all__')
def test_item_02_master_failed_relayed_and_outbox_backlog(master_registry, monkeypatch):
    outbox.flush_published()
    original = LoopbackTransport.produce
    down = [True]

    def produce(payload):
        if down[0]:
            return False
        return original(payload)

    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(produce))
    r = master_registry
    with harness.outbox_on():
        for pk in (1, 2, 3):
            SimplestModel.objects.create(id=pk, name=f'n{pk}')
        assert sample(r, 'cqrs_failed_messages_total', cqrs_id='simplest') == 3
        CQRSOutboxMessage.objects.update(created=timezone.now() - timedelta(seconds=120))
        assert sample(r, 'cqrs_outbox_backlog_messages', database='default') == 3
        assert sample(r, 'cqrs_outbox_oldest_age_seconds', database='default') >= 120
        down[0] = False
        assert outbox.relay_batch('default', min_age=0) == 3
    assert sample(r, 'cqrs_relayed_messages_total', cqrs_id='simplest') == 3
    assert sample(r, 'cqrs_published_messages_total', cqrs_id='simplest', signal_type='SAVE') == 3
    assert sample(r, 'cqrs_confirmed_messages_total', cqrs_id='simplest') == 3
    assert sample(r, 'cqrs_outbox_backlog_messages', database='default') == 0
    assert sample(r, 'cqrs_outbox_oldest_age_seconds', database='default') == 0


@pytest.mark.django_db(transaction=True, databases='__all__')
def test_item_02_master_counts_a_raising_transport_as_failed(master_registry, monkeypatch):
    def produce(payload):
        raise ConnectionError('down')

    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(produce))
    SimplestModel.objects.create(id=1, name='a')
    assert sample(master_registry, 'cqrs_failed_messages_total', cqrs_id='simplest') == 1
    assert sample(master_registry, 'cqrs_confirmed_messages_total', cqrs_id='simplest') == 0


@pytest.mark.django_db(databases='__all__')
def test_item_02_metrics_view_serves_the_default_registry(master_registry, monkeypatch):
    monkeypatch.delenv('PROMETHEUS_MULTIPROC_DIR', raising=False)
    monkeypatch.setattr(prometheus_client, 'REGISTRY', master_registry)
    metrics.master.published.labels('simplest', 'SAVE').inc(2)
    response = metrics.metrics_view(RequestFactory().get('/metrics'))
    assert response.status_code == 200
    assert response['Content-Type'].startswith('text/plain')
    text = response.content.decode()
    assert 'cqrs_published_messages_total{cqrs_id="simplest",signal_type="SAVE"} 2.0' in text
    assert 'cqrs_outbox_backlog_messages{database="default"} 0.0' in text


# --- off / not installed ------------------------------------------------------------------------


def run_python(code, **env):
    return subprocess.run(
        [sys.executable, '-c', code],
        cwd=ROOT,
        env={
            **os.environ,
            'DJANGO_SETTINGS_MODULE': 'tests.settings',
            'PYTHONPATH': str(ROOT),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_item_02_prometheus_client_is_not_imported_when_metrics_are_off():
    result = run_python(
        'import sys, django\n'
        'django.setup()\n'
        'from django.core.management import call_command, load_command_class\n'
        'import dj_cqrs.metrics, dj_cqrs.outbox, dj_cqrs.transport._consuming\n'
        'import dj_cqrs.controller.producer, dj_cqrs.management._supervisor\n'
        "call_command('migrate', run_syncdb=True, verbosity=0)\n"
        'from tests.dj_master.models import SimplestModel\n'
        "SimplestModel.objects.create(id=1, name='a')\n"
        "load_command_class('dj_cqrs', 'cqrs_consume').create_parser('m', 'cqrs_consume')\n"
        "print('imported' if 'prometheus_client' in sys.modules else 'not imported')\n"
    )
    assert result.stdout.strip().splitlines()[-1] == 'not imported', result.stderr


def test_item_02_metrics_port_without_prometheus_client_is_a_clear_command_error():
    result = run_python(
        'import sys\n'
        "sys.modules['prometheus_client'] = None  # as if not installed\n"
        'import django\n'
        'django.setup()\n'
        'from django.core.management import call_command\n'
        'from django.core.management.base import CommandError\n'
        'try:\n'
        "    call_command('cqrs_consume', '--metrics-port', '0')\n"
        'except CommandError as exc:\n'
        "    print('CommandError:', exc)\n"
    )
    assert result.stdout.strip() == (
        'CommandError: CQRS metrics need the prometheus_client package: '
        'pip install django-cqrs[metrics]'
    ), result.stderr


def test_item_02_metrics_setting_without_prometheus_client_fails_at_start_up(tmp_path):
    (tmp_path / 'metrics_on.py').write_text(
        "from tests.settings import *  # noqa: F403\n\nCQRS = {**CQRS, 'metrics': True}\n"
    )
    result = run_python(
        "import sys\nsys.modules['prometheus_client'] = None\nimport django\ndjango.setup()\n",
        DJANGO_SETTINGS_MODULE='metrics_on',
        PYTHONPATH=f'{ROOT}{os.pathsep}{tmp_path}',
    )
    assert result.returncode != 0
    assert 'pip install django-cqrs[metrics]' in result.stderr


def test_item_02_metrics_setting_enables_the_master_metrics(tmp_path):
    (tmp_path / 'metrics_on.py').write_text(
        "from tests.settings import *  # noqa: F403\n\nCQRS = {**CQRS, 'metrics': True}\n"
    )
    result = run_python(
        'import django, prometheus_client\n'
        'django.setup()\n'
        'from dj_cqrs import metrics\n'
        'print(metrics.master is not None, metrics.replica is None)\n'
        "print(prometheus_client.REGISTRY.get_sample_value('cqrs_published_messages_total',"
        " {'cqrs_id': 'x', 'signal_type': 'SAVE'}))\n",
        DJANGO_SETTINGS_MODULE='metrics_on',
        PYTHONPATH=f'{ROOT}{os.pathsep}{tmp_path}',
    )
    assert result.stdout.split() == ['True', 'True', 'None'], result.stderr
