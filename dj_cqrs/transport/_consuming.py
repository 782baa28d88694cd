"""The message lifecycle of a replica worker, shared by the broker transports.

A transport feeds ``Worker.handle_batch`` with the deliveries it received and gives it three
callables: ``ack(handle)``, ``reject(handle)`` (drop without requeue), called with a
delivery's ``handle``, and ``publish(routing_key, body, expiration)``; optionally
``ack_through(handle)``, which acknowledges every unsettled delivery up to this one (AMQP
``multiple``), for the successes of a batch. The worker parses each
body, applies it through the consumer controller (a batch shares one database transaction and
is applied by ``consumer.consume_batch``; acknowledgements follow the commit), and routes
failures (a falsy result or an exception) to the ``dj_cqrs.delay.DelayQueue``, back to the
replica queue with ``retries + 1``, or to the dead-letter queue.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import ujson
from django.db import DEFAULT_DB_ALIAS, Error, connections, router, transaction
from django.db.models import Model
from django.utils import timezone

from dj_cqrs import metrics, replica_status, tombstones
from dj_cqrs._logging import logger
from dj_cqrs.conf import cqrs_settings
from dj_cqrs.controller import consumer
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.delay import DelayMessage, DelayQueue
from dj_cqrs.registries import ReplicaRegistry

REQUIRED_KEYS = ('signal_type', 'cqrs_id', 'instance_data', 'instance_pk')

# Seconds between two purges of old tombstones by a worker.
TOMBSTONE_PURGE_INTERVAL = 600.0
# Seconds between two error lines about the replica status table (one per batch otherwise).
STATUS_ERROR_INTERVAL = 600.0


@dataclass
class Delivery:
    """One received message: its body, routing key and the transport's handle for acks."""

    body: bytes | str
    routing_key: str
    handle: Any = None
    payload: TransportPayload | None = field(default=None, repr=False)


def parse_body(body: bytes | str) -> tuple[TransportPayload | None, str | None]:
    """Return the payload of a message body, or None and the error line to log."""
    try:
        data = ujson.loads(body.decode('utf-8') if isinstance(body, bytes) else body)
    except (UnicodeDecodeError, ValueError):
        return None, f"CQRS couldn't be parsed: {body}."
    if not isinstance(data, dict):
        return None, f"CQRS couldn't be parsed: {body}."
    for key in REQUIRED_KEYS:
        if key not in data:
            return None, f"CQRS couldn't proceed, {key} isn't found in body: {body}."
    if not isinstance(data['cqrs_id'], str) or not isinstance(data['signal_type'], str):
        return None, f"CQRS couldn't proceed, cqrs_id and signal_type must be strings: {body}."
    retries = data.get('retries')
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
        return None, f"CQRS couldn't proceed, retries must be an integer: {body}."
    try:
        return TransportPayload.from_message(data), None
    except (ValueError, TypeError, OverflowError) as exc:
        return None, f"CQRS couldn't proceed, bad field value ({exc}): {body}."


def queue_from_routing_key(routing_key: str, cqrs_id: str) -> str | None:
    """The queue a ``cqrs.<queue>.<cqrs_id>`` routing key addresses (None for broadcasts)."""
    prefix, suffix = 'cqrs.', f'.{cqrs_id}'
    if routing_key.startswith(prefix) and routing_key.endswith(suffix):
        return routing_key[len(prefix) : -len(suffix)] or None
    return None


def dead_letter_expiration() -> str | None:
    """AMQP ``expiration`` of dead letters: ``dead_message_ttl`` in milliseconds."""
    ttl = cqrs_settings.replica.dead_message_ttl
    return None if ttl is None else str(int(ttl * 1000))


class Worker:
    """Applies deliveries and decides their fate; one per consuming connection."""

    def __init__(
        self,
        transport: Any,
        queue: str,
        ack: Callable[[Any], None],
        reject: Callable[[Any], None],
        publish: Callable[[str, str, str | None], None],
        delay_queue_max_size: int | None | bool = False,
        ack_through: Callable[[Any], None] | None = None,
    ) -> None:
        self.transport = transport
        self.queue = queue
        self.dead_letter_queue = cqrs_settings.replica.dead_letter_queue
        self.ack = ack
        self.reject = reject
        self.publish = publish
        if delay_queue_max_size is False:
            delay_queue_max_size = cqrs_settings.replica.delay_queue_max_size
        self.delay_queue = DelayQueue(delay_queue_max_size)
        self.inbox: list[Delivery] = []
        self.ack_through = ack_through
        # With ``ack_through``: the handles received and not yet settled, in delivery order.
        self._unsettled: dict[Any, None] = {}
        self._next_purge = 0.0  # ``time.monotonic()`` of the next purge of old tombstones
        self._next_status_error = 0.0  # ``time.monotonic()`` of the next status error line
        # Progress applied and not written yet (``replica_status``), and when to write it.
        self._progress: dict[str, replica_status.Progress] = {}
        self._next_progress_write = 0.0

    def handle_batch(self, deliveries: list[Delivery]) -> None:
        """Apply received deliveries in one transaction, acks after commit.

        When the transaction fails to commit, the messages are applied again one by one, each
        in a transaction of its own.
        """
        ready = [d for d in deliveries if self._prepare(d)]
        if not ready:
            return
        recorder = metrics.replica
        if recorder is not None:
            recorder.begin()
            started = time.perf_counter()
        connections[self._batch_db(ready)].close_if_unusable_or_obsolete()
        outcomes: list[tuple[Delivery, Any, BaseException | None]] = []
        if len(ready) == 1:
            outcomes.append(self._apply(ready[0]))
        else:
            try:
                with transaction.atomic(using=self._batch_db(ready)):
                    results = consumer.consume_batch([delivery.payload for delivery in ready])
                outcomes = [
                    (delivery, result, exc)
                    for delivery, (result, exc) in zip(ready, results, strict=True)
                ]
            except Exception as exc:
                logger.error('CQRS batch of %s messages failed to commit: %s', len(ready), exc)
                if recorder is not None:
                    recorder.begin()
                outcomes = [self._apply(delivery) for delivery in ready]
        applied = [delivery.payload for delivery, result, _ in outcomes if result]
        if recorder is not None:
            recorder.batch(len(ready))
            recorder.applied(applied, time.perf_counter() - started)
        self._ack_all([delivery.handle for delivery, result, _ in outcomes if result])
        for delivery, result, exc in outcomes:
            if result:
                self.transport.log_consumed_accepted(delivery.payload)
            else:
                self._fail(delivery, exc)
        self._record_progress(applied)

    def receive(self, delivery: Delivery) -> None:
        """Keep a delivery for the next batch (called from the transport's message callback)."""
        self.inbox.append(delivery)
        if self.ack_through is not None:
            self._unsettled[delivery.handle] = None

    def run(self, stop: Any, poll: Callable[[float], None], max_wait: float = 0.5) -> None:
        """Until ``stop`` is set: ``poll(timeout)`` the broker, apply what arrived, retry what
        is due."""
        while not stop.is_set():
            wait = self.delay_queue.seconds_to_next_eta()
            poll(max_wait if wait is None else max(min(wait, max_wait), 0.01))
            while self.inbox:
                batch, self.inbox = self.inbox, []
                self.handle_batch(batch)
            if self._progress and time.monotonic() >= self._next_progress_write:
                self.write_progress()
            self.process_due()
            if time.monotonic() >= self._next_purge:
                self.purge_tombstones()
                self.purge_lag_samples()
        self.write_progress()

    def purge_tombstones(self) -> None:
        """Delete the tombstones older than ``tombstone_ttl``: one query per database of the
        replica models; done by ``run`` at start and every ``TOMBSTONE_PURGE_INTERVAL``."""
        self._next_purge = time.monotonic() + TOMBSTONE_PURGE_INTERVAL
        if not tombstones.enabled():
            return
        for using in _replica_databases():
            try:
                purged = tombstones.purge(using)
            except Error as exc:
                logger.error('CQRS tombstones could not be purged (database %s): %s', using, exc)
                continue
            if purged:
                logger.info('CQRS purged %s old tombstone(s) (database %s).', purged, using)

    def purge_lag_samples(self) -> None:
        """Delete the replica's lag samples older than ``replica_status.LAG_HISTORY``."""
        try:
            replica_status.purge(replica_status.database())
        except Error as exc:
            logger.error('CQRS lag samples could not be purged: %s', exc)

    def process_due(self) -> None:
        """Republish the delayed messages whose ETA has passed."""
        for message in self.delay_queue.get_ready():
            self._requeue(message.delivery_tag, message.payload)

    def _prepare(self, delivery: Delivery) -> bool:
        payload, error = parse_body(delivery.body)
        if payload is None:
            logger.error(error)
            self._unsettled.pop(delivery.handle, None)
            self.reject(delivery.handle)
            if metrics.replica is not None:
                metrics.replica.count('', '', metrics.REJECTED)
            return False
        payload.queue = queue_from_routing_key(delivery.routing_key, payload.cqrs_id)
        delivery.payload = payload
        self.transport.log_consumed(payload)
        if payload.is_expired():
            self._dead_letter(delivery)
            return False
        return True

    def _record_progress(self, applied: list[TransportPayload]) -> None:
        """Keep what the batch applied for ``dj_cqrs.status``; written by ``write_progress``
        now when the last write is ``replica_status.WRITE_INTERVAL`` old, else by ``run``."""
        if not applied:
            return
        try:
            replica_status.merge(self._progress, replica_status.summarize(applied))
        except Exception as exc:  # bad data must not stop the worker
            logger.error('CQRS replica status could not be computed: %s', exc)
            return
        if time.monotonic() >= self._next_progress_write:
            self.write_progress()

    def write_progress(self) -> None:
        """Write the progress kept since the last write: one statement, after the commit of the
        batches. A failure is logged (at most every ``STATUS_ERROR_INTERVAL``), not raised."""
        progress, self._progress = self._progress, {}
        self._next_progress_write = time.monotonic() + replica_status.WRITE_INTERVAL
        if not progress:
            return
        try:
            replica_status.record(replica_status.database(), progress)
        except Exception as exc:
            if time.monotonic() >= self._next_status_error:
                self._next_status_error = time.monotonic() + STATUS_ERROR_INTERVAL
                logger.error('CQRS replica status could not be written: %s', exc)

    def _apply(self, delivery: Delivery) -> tuple[Delivery, Any, BaseException | None]:
        try:
            return delivery, consumer.consume(delivery.payload), None
        except Exception as exc:
            logger.error('CQRS service exception', exc_info=True)
            return delivery, None, exc

    @staticmethod
    def _batch_db(deliveries: list[Delivery]) -> str:
        model_cls = ReplicaRegistry.models.get(deliveries[0].payload.cqrs_id)
        if model_cls is None or model_cls.CQRS_NO_DB_OPERATIONS:
            return DEFAULT_DB_ALIAS
        return router.db_for_write(model_cls)

    def _fail(self, delivery: Delivery, exc: BaseException | None) -> None:
        payload = delivery.payload
        self.transport.log_consumed_failed(payload)
        model_cls = ReplicaRegistry.models.get(payload.cqrs_id)
        try:
            retry = model_cls is not None and model_cls.should_retry_cqrs(payload.retries, exc)
            delay = model_cls.get_cqrs_retry_delay(payload.retries) if retry else 0
        except Exception as error:
            logger.error('CQRS retry hook of %s failed: %s', payload.cqrs_id, error)
            retry, delay = False, 0
        if not retry:
            self._dead_letter(delivery)
            return
        if self.delay_queue.full():
            # Memory bound: the message due first goes back to the queue now.
            evicted = self.delay_queue.get()
            self._requeue(evicted.delivery_tag, evicted.payload)
        message = DelayMessage(delivery.handle, payload, timezone.now() + timedelta(seconds=delay))
        self.delay_queue.put(message)
        self.transport.log_delayed(payload, delay, message.eta)
        if metrics.replica is not None:
            metrics.replica.count(payload.cqrs_id, payload.signal_type, metrics.RETRIED)

    def _ack(self, handle: Any) -> None:
        self._unsettled.pop(handle, None)
        self.ack(handle)

    def _ack_all(self, handles: list[Any]) -> None:
        """Acknowledge ``handles``: the ones that lead the unsettled deliveries with one
        ``ack_through`` (none of the deliveries held for a retry is among them), the rest one by
        one."""
        if self.ack_through is not None and len(handles) > 1:
            wanted = set(handles)
            leading = list(itertools.takewhile(wanted.__contains__, self._unsettled))
            if len(leading) > 1:
                for handle in leading:
                    del self._unsettled[handle]
                self.ack_through(leading[-1])
                wanted.difference_update(leading)
                handles = [handle for handle in handles if handle in wanted]
        for handle in handles:
            self._ack(handle)

    def _requeue(self, handle: Any, payload: TransportPayload) -> None:
        payload.retries += 1
        routing_key = f'cqrs.{self.queue}.{payload.cqrs_id}'
        self.publish(routing_key, ujson.dumps(payload.to_dict()), None)
        self._ack(handle)
        self.transport.log_requeued(payload)

    def _dead_letter(self, delivery: Delivery) -> None:
        payload = delivery.payload
        routing_key = f'cqrs.{self.dead_letter_queue}.{payload.cqrs_id}'
        self.publish(routing_key, ujson.dumps(payload.to_dict()), dead_letter_expiration())
        self._ack(delivery.handle)
        self.transport.log_dead_letter(payload)
        if metrics.replica is not None:
            metrics.replica.count(payload.cqrs_id, payload.signal_type, metrics.DEAD_LETTERED)


def _replica_databases() -> list[str]:
    """The databases the replica models write to (where their tombstones are)."""
    aliases = {
        router.db_for_write(model_cls)
        for model_cls in ReplicaRegistry.models.values()
        if isinstance(model_cls, type)
        and issubclass(model_cls, Model)
        and not model_cls._meta.abstract
        and not model_cls.CQRS_NO_DB_OPERATIONS
    }
    return sorted(aliases)
