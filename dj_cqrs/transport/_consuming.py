"""The message lifecycle of a replica worker, shared by the broker transports.

A transport feeds ``Worker.handle_batch`` with the deliveries it received and gives it three
callables: ``ack(delivery)``, ``reject(delivery)`` (drop without requeue) and
``publish(routing_key, body, expiration)``. The worker parses each body, applies it through the
consumer controller (a batch shares one database transaction, each message in a savepoint of
its own; acknowledgements follow the commit), and routes failures to the delay queue, back to
the replica queue with ``retries + 1``, or to the dead-letter queue.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import ujson
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction

from dj_cqrs._logging import logger
from dj_cqrs.conf import cqrs_settings
from dj_cqrs.controller import consumer
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.registries import ReplicaRegistry

REQUIRED_KEYS = ('signal_type', 'cqrs_id', 'instance_data', 'instance_pk')


@dataclass
class Delivery:
    """One received message: its body, routing key and the transport's handle for acks."""

    body: bytes | str
    routing_key: str
    handle: Any = None
    payload: TransportPayload | None = field(default=None, repr=False)


class DelayQueue:
    """Failed messages waiting for their retry, the earliest due first."""

    def __init__(self, max_size: int | None) -> None:
        self.max_size = max_size
        self._heap: list[tuple[float, int, Delivery]] = []
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, delivery: Delivery, due: float) -> Delivery | None:
        """Add a delivery; when full, return the earliest-due one, to be requeued at once."""
        evicted = None
        if self.max_size is not None and len(self._heap) >= self.max_size:
            evicted = heapq.heappop(self._heap)[2]
        heapq.heappush(self._heap, (due, next(self._counter), delivery))
        return evicted

    def pop_due(self, now: float) -> list[Delivery]:
        """Remove and return the deliveries whose time has come."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[2])
        return due

    def seconds_to_next_due(self) -> float | None:
        """Seconds until the earliest delivery is due (None when the queue is empty)."""
        return None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic())

    def clear(self) -> None:
        self._heap.clear()


def parse_body(body: bytes | str) -> tuple[TransportPayload | None, str | None]:
    """Return the payload of a message body, or None and the reason it is unusable."""
    try:
        if isinstance(body, bytes):
            body = body.decode('utf-8')
        data = ujson.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f'body is not UTF-8 JSON ({exc})'
    if not isinstance(data, dict):
        return None, f'body is a JSON {type(data).__name__}, not an object'
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        return None, f'body lacks {", ".join(missing)}'
    if not isinstance(data['cqrs_id'], str) or not isinstance(data['signal_type'], str):
        return None, 'cqrs_id and signal_type must be strings'
    retries = data.get('retries')
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
        return None, 'retries must be an integer'
    try:
        return TransportPayload.from_message(data), None
    except (ValueError, TypeError, OverflowError) as exc:
        return None, f'bad field value ({exc})'


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
        ack: Callable[[Delivery], None],
        reject: Callable[[Delivery], None],
        publish: Callable[[str, str, str | None], None],
        delay_queue_max_size: int | None | bool = False,
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

    def handle_batch(self, deliveries: list[Delivery]) -> None:
        """Apply received deliveries: one transaction, a savepoint each, acks after commit."""
        ready = [d for d in deliveries if self._prepare(d)]
        if not ready:
            return
        connections[self._batch_db(ready)].close_if_unusable_or_obsolete()
        outcomes: list[tuple[Delivery, Any, BaseException | None]] = []
        if len(ready) == 1:
            outcomes.append(self._apply(ready[0]))
        else:
            try:
                with transaction.atomic(using=self._batch_db(ready)):
                    for delivery in ready:
                        outcomes.append(self._apply(delivery))
            except Exception as exc:
                logger.error('CQRS batch of %s messages failed to commit: %s', len(ready), exc)
                outcomes = [self._apply(delivery) for delivery in ready]
        for delivery, result, exc in outcomes:
            if result:
                self.ack(delivery)
                self.transport.log_consumed_accepted(delivery.payload)
            else:
                self._fail(delivery, exc)

    def receive(self, delivery: Delivery) -> None:
        """Keep a delivery for the next batch (called from the transport's message callback)."""
        self.inbox.append(delivery)

    def run(self, stop: Any, poll: Callable[[float], None], max_wait: float = 0.5) -> None:
        """Until ``stop`` is set: ``poll(timeout)`` the broker, apply what arrived, retry what
        is due."""
        while not stop.is_set():
            wait = self.delay_queue.seconds_to_next_due()
            poll(max_wait if wait is None else max(min(wait, max_wait), 0.01))
            while self.inbox:
                batch, self.inbox = self.inbox, []
                self.handle_batch(batch)
            self.process_due()

    def process_due(self, now: float | None = None) -> None:
        """Republish the delayed messages whose retry time has come."""
        for delivery in self.delay_queue.pop_due(time.monotonic() if now is None else now):
            self._requeue(delivery)

    def _prepare(self, delivery: Delivery) -> bool:
        payload, error = parse_body(delivery.body)
        if payload is None:
            logger.error('CQRS message rejected (routing key %s): %s.', delivery.routing_key, error)
            self.reject(delivery)
            return False
        payload.queue = queue_from_routing_key(delivery.routing_key, payload.cqrs_id)
        delivery.payload = payload
        self.transport.log_consumed(payload)
        if payload.is_expired():
            self._dead_letter(delivery)
            return False
        return True

    def _apply(self, delivery: Delivery) -> tuple[Delivery, Any, BaseException | None]:
        try:
            return delivery, consumer.consume(delivery.payload), None
        except Exception as exc:
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
        eta = datetime.now(tz=timezone.utc) + timedelta(seconds=delay)
        self.transport.log_delayed(payload, delay, eta.isoformat())
        evicted = self.delay_queue.push(delivery, time.monotonic() + delay)
        if evicted is not None:
            self._requeue(evicted)

    def _requeue(self, delivery: Delivery) -> None:
        payload = delivery.payload
        payload.retries += 1
        routing_key = f'cqrs.{self.queue}.{payload.cqrs_id}'
        self.publish(routing_key, ujson.dumps(payload.to_dict()), None)
        self.ack(delivery)
        self.transport.log_requeued(payload)

    def _dead_letter(self, delivery: Delivery) -> None:
        payload = delivery.payload
        routing_key = f'cqrs.{self.dead_letter_queue}.{payload.cqrs_id}'
        self.publish(routing_key, ujson.dumps(payload.to_dict()), dead_letter_expiration())
        self.ack(delivery)
        self.transport.log_dead_letter(payload)
