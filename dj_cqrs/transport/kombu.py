"""Kombu transport: the same exchange, queues, routing keys and bodies over any Kombu broker URL
(``amqp://``, ``redis://``, ...), with the retry / delay / dead-letter lifecycle of the RabbitMQ
transport."""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

import kombu
import ujson
from kombu.exceptions import OperationalError

from dj_cqrs._logging import logger
from dj_cqrs.conf import cqrs_settings
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.transport._consuming import Delivery, Worker
from dj_cqrs.transport._lifecycle import (
    BrokerTransportMixin,
    StopFlag,
    consume_until_stopped,
    replica_bindings,
)
from dj_cqrs.transport.base import BaseTransport
from dj_cqrs.transport.mixins import LoggingMixin
from dj_cqrs.transport.rabbit_mq import produced_routing_key


def _connection() -> kombu.Connection:
    transport_options = {'confirm_publish': bool(cqrs_settings.publisher_confirms)}
    return kombu.Connection(
        cqrs_settings.url, transport_options=transport_options, ssl=_ssl_option()
    )


def _ssl_option() -> Any:
    """Kombu's ``ssl`` argument from ``settings.CQRS['ssl_options']`` and the URL scheme.

    The broker's certificate is verified and, unless ``check_hostname`` is False, its name is
    checked against ``server_hostname`` (default: the host of the URL).
    """
    url = cqrs_settings.url or ''
    tls = cqrs_settings.ssl_options
    if tls is None:
        if not url.startswith(('amqps://', 'rediss://')):
            return False
        tls = {}
    check_hostname = tls.get('check_hostname', True)
    if url.startswith('rediss://'):
        return {
            'ssl_cert_reqs': ssl.CERT_REQUIRED,
            'ssl_ca_certs': tls.get('ca_certs'),
            'ssl_certfile': tls.get('certfile'),
            'ssl_keyfile': tls.get('keyfile'),
            'ssl_check_hostname': check_hostname,
        }
    options = {
        'cert_reqs': ssl.CERT_REQUIRED,
        'ca_certs': tls.get('ca_certs'),
        'certfile': tls.get('certfile'),
        'keyfile': tls.get('keyfile'),
        # py-amqp checks the name exactly when it is given one.
        'server_hostname': (tls.get('server_hostname') or urlparse(url).hostname)
        if check_hostname
        else None,
    }
    return {key: value for key, value in options.items() if value is not None}


def _location(connection: kombu.Connection) -> str:
    """The broker URL with the password masked."""
    return connection.as_uri(include_password=False)


def _exchange() -> kombu.Exchange:
    return kombu.Exchange(cqrs_settings.exchange, type='topic', durable=True)


def _publish_kwargs(expiration: str | None = None) -> dict:
    kwargs = {
        'delivery_mode': 2,
        'content_type': 'text/plain',
        'content_encoding': 'utf-8',
    }
    if expiration is not None:
        kwargs['expiration'] = int(expiration) / 1000
    return kwargs


class _KombuPublisher:
    """One connection and producer per process, reopened after ``fork()`` or an error."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pid: int | None = None
        self._connection: kombu.Connection | None = None
        self._producer: kombu.Producer | None = None
        self.connections_opened = 0

    def publish(self, routing_key: str, body: str) -> None:
        with self._lock:
            for attempt in (1, 2):
                try:
                    producer = self._ensure_open()
                    producer.publish(
                        body, exchange=_exchange(), routing_key=routing_key, **_publish_kwargs()
                    )
                    return
                except Exception as exc:
                    errors = self._errors()
                    if attempt == 2 or not isinstance(exc, errors):
                        raise
                    self.close()

    def _errors(self) -> tuple:
        connection = self._connection or _connection()
        return (*connection.connection_errors, *connection.channel_errors, OSError)

    def _ensure_open(self) -> kombu.Producer:
        if self._pid != os.getpid():
            self._connection = self._producer = None
            self._pid = os.getpid()
        if self._producer is None:
            self._connection = _connection()
            self._connection.ensure_connection(max_retries=1)
            self.connections_opened += 1
            self._producer = kombu.Producer(self._connection.channel())
            _exchange()(self._producer.channel).declare()
        return self._producer

    def close(self) -> None:
        with self._lock:
            connection, self._connection, self._producer = self._connection, None, None
            if connection is not None and self._pid == os.getpid():
                try:
                    connection.release()
                except Exception:
                    pass


class KombuTransport(BrokerTransportMixin, LoggingMixin, BaseTransport):
    """Transport over any Kombu broker URL."""

    _publisher = _KombuPublisher()
    _stop = StopFlag()

    @classmethod
    def produce(cls, payload: TransportPayload) -> bool:
        """Publish one payload; False (logged) when the broker cannot be reached."""
        routing_key = produced_routing_key(payload)
        try:
            cls._publisher.publish(routing_key, ujson.dumps(payload.to_dict()))
        except Exception as exc:
            logger.error(
                "CQRS couldn't be published: pk = %s (%s). Error: %s.",
                payload.pk,
                payload.cqrs_id,
                type(exc).__name__,
            )
            return False
        cls.log_produced(payload)
        return True

    @classmethod
    def consume(cls, cqrs_ids: Iterable[str] | None = None, **kwargs: Any) -> None:
        """Consume the replica queue until SIGTERM / SIGINT, reconnecting after broker loss."""
        cls._stop.install()
        probe = _connection()

        def connect() -> kombu.Connection:
            connection = _connection()
            try:
                connection.ensure_connection(max_retries=1)
            except Exception:
                connection.release()
                raise
            return connection

        consume_until_stopped(
            cls._stop,
            connect,
            lambda connection: cls._consume_on(connection, cqrs_ids),
            lambda connection: connection.release(),
            (*probe.connection_errors, *probe.channel_errors, OSError, OperationalError),
            _location(probe),
            cls.CONSUMER_RETRY_TIMEOUT,
            cls.MAX_RECONNECT_DELAY,
        )

    @classmethod
    def _queues(cls, cqrs_ids: Any) -> tuple[kombu.Queue, kombu.Queue]:
        exchange = _exchange()
        queue_name = cqrs_settings.queue
        bindings: dict[str, list] = {}
        for name, routing_key in replica_bindings(cqrs_ids):
            bindings.setdefault(name, []).append(kombu.binding(exchange, routing_key=routing_key))
        dead_letter_name = cqrs_settings.replica.dead_letter_queue
        queue = kombu.Queue(queue_name, exchange, durable=True, bindings=bindings[queue_name])
        dead = kombu.Queue(
            dead_letter_name, exchange, durable=True, bindings=bindings[dead_letter_name]
        )
        return queue, dead

    @classmethod
    def _consume_on(cls, connection: kombu.Connection, cqrs_ids: Any) -> None:
        channel = connection.channel()
        queue, dead = cls._queues(cqrs_ids)
        queue(channel).declare()
        dead(channel).declare()
        producer = kombu.Producer(connection.channel(), exchange=_exchange())
        prefetch = cqrs_settings.consumer_prefetch_count

        def on_message(message: Any) -> None:
            routing_key = message.delivery_info.get('routing_key', '')
            worker.receive(Delivery(message.body, routing_key, message))

        def publish(routing_key: str, body: str, expiration: str | None) -> None:
            producer.publish(body, routing_key=routing_key, **_publish_kwargs(expiration))

        worker = Worker(
            cls,
            cqrs_settings.queue,
            ack=lambda message: message.ack(),
            reject=lambda message: message.reject(requeue=False),
            publish=publish,
            # Delayed messages stay unacknowledged and count against the prefetch: keep room
            # for at least one new message, requeueing the earliest due when full.
            delay_queue_max_size=max(1, prefetch - 1) if prefetch else None,
        )
        consumer = kombu.Consumer(channel, queues=[queue], on_message=on_message, no_ack=False)
        consumer.qos(prefetch_count=prefetch)
        consumer.consume()
        logger.info('CQRS consumer is ready: queue %s at %s.', queue.name, _location(connection))

        def poll(timeout: float) -> None:
            try:
                connection.drain_events(timeout=timeout)
            except TimeoutError:
                pass

        worker.run(cls._stop, poll)
        consumer.cancel()
