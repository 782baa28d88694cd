"""Prometheus metrics of the master and of the replica workers.

Optional: ``pip install django-cqrs[metrics]`` installs ``prometheus_client``, which only this
module imports, and only once metrics are enabled. While they are off, ``master`` and
``replica`` are None and the hooks of the publishing and consuming paths cost one attribute
check.

- Master: ``settings.CQRS['metrics'] = True`` (or ``enable()``) registers the master metrics in
  ``prometheus_client``'s default registry; serve them with ``metrics_view`` or
  django-prometheus.
- Replica: ``manage.py cqrs_consume --metrics-port PORT`` records the worker metrics (in
  ``prometheus_client``'s multiprocess mode, one file per worker) and serves their sum on
  ``http://HOST:PORT/metrics``.
"""

from __future__ import annotations

import bisect
import os
import shutil
import tempfile
import threading
from collections import Counter as _Tally
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from dj_cqrs._logging import logger

__all__ = [
    'INSTALL_HINT',
    'MasterMetrics',
    'MetricsServer',
    'ReplicaMetrics',
    'enable',
    'enable_replica',
    'master',
    'metrics_view',
    'outbox_backlog',
    'replica',
]

INSTALL_HINT = 'pip install django-cqrs[metrics]'

# Outcomes of a consumed message (label ``outcome`` of cqrs_consumed_messages_total).
APPLIED, STALE, RETRIED, DEAD_LETTERED, REJECTED = (
    'applied',
    'stale',
    'retried',
    'dead_lettered',
    'rejected',
)

LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
APPLY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)

master: MasterMetrics | None = None
replica: ReplicaMetrics | None = None

# While a replica batch is applied: the (cqrs_id, signal_type) of each message found stale.
_stale: list[tuple[str, str]] | None = None
_lock = threading.Lock()


def _prometheus() -> Any:
    """``prometheus_client``, or ``ImproperlyConfigured`` saying how to install it."""
    try:
        import prometheus_client
    except ImportError:
        raise ImproperlyConfigured(
            f'CQRS metrics need the prometheus_client package: {INSTALL_HINT}'
        ) from None
    return prometheus_client


def note_stale(cqrs_id: str, signal_type: str) -> None:
    """Called by the replica manager for a message it does not apply because it is old."""
    if _stale is not None:
        _stale.append((cqrs_id, signal_type))


class ReplicaMetrics:
    """The metrics of a replica worker; ``Worker`` records them once per batch."""

    def __init__(self, registry: Any = None) -> None:
        prometheus_client = _prometheus()
        if registry is None:
            registry = prometheus_client.REGISTRY
        self.messages = prometheus_client.Counter(
            'cqrs_consumed_messages',
            'Messages consumed by the replica workers, by outcome.',
            ['cqrs_id', 'signal_type', 'outcome'],
            registry=registry,
        )
        self.apply_duration = prometheus_client.Histogram(
            'cqrs_apply_duration_seconds',
            'Time to apply one message (the time of its batch divided by the batch size).',
            ['cqrs_id'],
            buckets=APPLY_BUCKETS,
            registry=registry,
        )
        self.lag = prometheus_client.Histogram(
            'cqrs_replication_lag_seconds',
            "Time from the master's cqrs_updated of a message to its apply on the replica.",
            ['cqrs_id'],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.batch_size = prometheus_client.Histogram(
            'cqrs_consume_batch_size',
            'Messages applied together in one batch.',
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple, Any] = {}  # labelled children, looked up once

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def begin(self) -> None:
        """Start collecting the stale messages of an apply (again, after a rollback)."""
        global _stale
        _stale = []

    def count(self, cqrs_id: str, signal_type: str, outcome: str, amount: int = 1) -> None:
        self._child(self.messages, cqrs_id, signal_type, outcome).inc(amount)

    def applied(self, payloads: list[Any], elapsed: float) -> None:
        """Record the messages of a batch that were applied (or found stale)."""
        global _stale
        stale, _stale = _Tally(_stale or ()), None
        if not payloads:
            return
        tally: _Tally = _Tally()
        lags: dict[str, list[float]] = {}
        now = datetime.now(timezone.utc)
        naive_now = None
        for payload in payloads:
            cqrs_id = payload.cqrs_id
            tally[(cqrs_id, payload.signal_type)] += 1
            data = payload.instance_data
            updated = data.get('cqrs_updated') if isinstance(data, dict) else None
            if not isinstance(updated, str):
                continue
            try:
                moment = datetime.fromisoformat(updated)
            except ValueError:
                continue
            if moment.tzinfo is None:
                naive_now = naive_now or datetime.now()
                lag = (naive_now - moment).total_seconds()
            else:
                lag = (now - moment).total_seconds()
            lags.setdefault(cqrs_id, []).append(max(lag, 0.0))
        per_message = elapsed / len(payloads)
        per_model: _Tally = _Tally()
        for (cqrs_id, signal_type), amount in tally.items():
            old = min(stale.get((cqrs_id, signal_type), 0), amount)
            if amount > old:
                self.count(cqrs_id, signal_type, APPLIED, amount - old)
            if old:
                self.count(cqrs_id, signal_type, STALE, old)
            per_model[cqrs_id] += amount
        for cqrs_id, amount in per_model.items():
            _observe_many(self._child(self.apply_duration, cqrs_id), [per_message] * amount)
        for cqrs_id, values in lags.items():
            _observe_many(self._child(self.lag, cqrs_id), values)

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)


def _observe_many(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for each value, with one increment per bucket."""
    upper = getattr(histogram, '_upper_bounds', None)
    buckets = getattr(histogram, '_buckets', None)
    total = getattr(histogram, '_sum', None)
    if upper is None or buckets is None or total is None or len(upper) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts = _Tally(bisect.bisect_left(upper, value) for value in values)
    for index, amount in counts.items():
        buckets[index].inc(amount)
    total.inc(sum(values))


class MasterMetrics:
    """The metrics of the master: counters of the publishing pipeline, outbox gauges."""

    def __init__(self, registry: Any = None) -> None:
        prometheus_client = _prometheus()
        if registry is None:
            registry = prometheus_client.REGISTRY
        self.published = prometheus_client.Counter(
            'cqrs_published_messages',
            'Messages handed to the transport.',
            ['cqrs_id', 'signal_type'],
            registry=registry,
        )
        self.confirmed = prometheus_client.Counter(
            'cqrs_confirmed_messages',
            'Messages the broker confirmed (taken by the transport, for one without confirms).',
            ['cqrs_id'],
            registry=registry,
        )
        self.failed = prometheus_client.Counter(
            'cqrs_failed_messages',
            'Messages whose publish failed or that the broker refused or lost.',
            ['cqrs_id'],
            registry=registry,
        )
        self.relayed = prometheus_client.Counter(
            'cqrs_relayed_messages',
            'Messages published from the outbox by the relay.',
            ['cqrs_id'],
            registry=registry,
        )
        registry.register(OutboxCollector())

    def produced(self, payload: Any, result: Any) -> None:
        if result is False:
            self.failed.labels(payload.cqrs_id).inc()
        else:
            self.published.labels(payload.cqrs_id, payload.signal_type).inc()


class OutboxCollector:
    """``cqrs_outbox_backlog_messages`` and ``cqrs_outbox_oldest_age_seconds``, queried from
    the outbox table of every database when scraped."""

    def describe(self) -> list:
        return list(self._families())

    def collect(self) -> Iterator:
        rows, age = self._families()
        for database, count, oldest_age in outbox_backlog():
            rows.add_metric([database], count)
            age.add_metric([database], oldest_age or 0.0)
        yield rows
        yield age

    @staticmethod
    def _families() -> tuple[Any, Any]:
        from prometheus_client.core import GaugeMetricFamily

        return (
            GaugeMetricFamily(
                'cqrs_outbox_backlog_messages',
                'Rows in the outbox (messages not confirmed by the broker yet).',
                labels=['database'],
            ),
            GaugeMetricFamily(
                'cqrs_outbox_oldest_age_seconds',
                'Age of the oldest outbox row (0 when the outbox is empty).',
                labels=['database'],
            ),
        )


def outbox_backlog(
    on_error: Callable[[str, Exception], None] | None = None,
) -> list[tuple[str, int, float | None]]:
    """``(database, rows, age of the oldest row in seconds or None)`` for every database
    that has the outbox table (also what ``cqrs_status`` shows).

    A database that cannot be queried is left out and handed to ``on_error(alias, exc)``
    (by default: logged).
    """
    from django.apps import apps
    from django.db import DatabaseError, connections, router
    from django.db.models import Count, Min
    from django.utils import timezone as django_timezone

    model = apps.get_model('dj_cqrs', 'CQRSOutboxMessage')
    table = model._meta.db_table
    result = []
    for alias in connections:
        if not router.allow_migrate_model(alias, model):
            continue
        try:
            with connections[alias].cursor() as cursor:
                if table not in connections[alias].introspection.table_names(cursor):
                    continue
            figures = model._default_manager.using(alias).aggregate(
                rows=Count('id'), oldest=Min('created')
            )
        except DatabaseError as exc:
            if on_error is None:
                logger.error(
                    'CQRS metrics: the outbox of database %s cannot be read: %s', alias, exc
                )
            else:
                on_error(alias, exc)
            continue
        oldest = figures['oldest']
        age = None if oldest is None else (django_timezone.now() - oldest).total_seconds()
        result.append((alias, figures['rows'], age))
    return result


def enable(registry: Any = None) -> MasterMetrics:
    """Record the master metrics in ``registry`` (the default registry); idempotent.

    ``settings.CQRS['metrics'] = True`` calls it when Django starts.
    """
    global master
    with _lock:
        if master is None:
            master = MasterMetrics(registry)
    return master


def enable_replica(registry: Any = None) -> ReplicaMetrics:
    """Record the replica worker metrics in ``registry`` (the default registry); idempotent."""
    global replica
    with _lock:
        if replica is None:
            replica = ReplicaMetrics(registry)
    return replica


def _registry_to_serve() -> Any:
    """The default registry, or, in multiprocess mode, the sum of the processes' files."""
    prometheus_client = _prometheus()
    path = os.environ.get('PROMETHEUS_MULTIPROC_DIR')
    if not path:
        return prometheus_client.REGISTRY
    from prometheus_client import multiprocess

    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    if master is not None:
        registry.register(OutboxCollector())
    return registry


def metrics_view(request: Any) -> Any:
    """A Django view of the metrics in the Prometheus text format.

    ``path('metrics', dj_cqrs.metrics.metrics_view)`` in the project's URLs: it serves
    ``prometheus_client``'s default registry (the sum of the processes' files when
    ``PROMETHEUS_MULTIPROC_DIR`` is set), so the project's own metrics are included.
    """
    from django.http import HttpResponse

    prometheus_client = _prometheus()
    body = prometheus_client.generate_latest(_registry_to_serve())
    return HttpResponse(body, content_type=prometheus_client.CONTENT_TYPE_LATEST)


class MetricsServer:
    """The HTTP endpoint of ``cqrs_consume --metrics-port``: serves the sum of the workers'
    metrics (``prometheus_client`` multiprocess mode) from the supervisor process.

    ``start()`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary directory (before the
    workers are forked, which inherit it), enables the replica metrics and listens on
    ``host:port``; ``process_dead(pid)`` is called for every worker that exits; ``stop()``
    closes the server and removes the directory.
    """

    def __init__(self, port: int, host: str = '') -> None:
        self.port = port
        self.host = host
        self.path: str | None = None
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> MetricsServer:
        prometheus_client = _prometheus()
        from prometheus_client import multiprocess, values

        self.path = tempfile.mkdtemp(prefix='cqrs-metrics-')
        os.environ['PROMETHEUS_MULTIPROC_DIR'] = self.path
        # prometheus_client reads the variable when first imported: it may have been before.
        values.ValueClass = values.MultiProcessValue()
        enable_replica()
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, self.path)
        try:
            self._server = ThreadingHTTPServer((self.host, self.port), _handler(registry))
        except OSError:
            self.stop()
            raise
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, name='cqrs-metrics', daemon=True
        ).start()
        logger.info('CQRS consumer: metrics on port %s.', self.port)
        return self

    def process_dead(self, pid: int | None) -> None:
        if self.path and pid:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.path)

    def close_in_child(self) -> None:
        """In a forked worker: close the inherited listening socket."""
        if self._server is not None:
            self._server.socket.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.path:
            shutil.rmtree(self.path, ignore_errors=True)


def _handler(registry: Any) -> type[BaseHTTPRequestHandler]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.split('?', 1)[0] not in ('/', '/metrics'):
                self.send_error(404)
                return
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header('Content-Type', CONTENT_TYPE_LATEST)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Iterable) -> None:
            pass

    return Handler
