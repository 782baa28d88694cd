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
from amqp.exceptions import PreconditionFailed
from kombu.exceptions import OperationalError

from dj_cqrs._logging import logger
from dj_cqrs.conf import broker_urls, cqrs_settings
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.transport._consuming import Delivery, Worker
from dj_cqrs.transport._lifecycle import (
    BrokerTransportMixin,
    StopFlag,
    connect_first_live,
    consume_until_stopped,
    next_node,
    queue_type_error,
    replica_bindings,
    replica_queue_arguments,
)
from dj_cqrs.transport.base import BaseTransport
from dj_cqrs.transport.mixins import LoggingMixin
from dj_cqrs.transport.rabbit_mq import produced_routing_key


def _node_urls() -> list[str | None]:
    """The broker URLs of ``settings.CQRS['url']`` in failover order (``[None]``: Kombu's
    default broker)."""
    return broker_urls(cqrs_settings.url) or [None]


def _connection(url: str | None = None, confirm: bool | None = None) -> kombu.Connection:
    """A (not yet open) connection to one node: ``url``, by default the first one.

    It publishes with confirms when ``confirm`` says so (default: ``publisher_confirms``).
    """
    url = url or _node_urls()[0]
    if confirm is None:
        confirm = bool(cqrs_settings.publisher_confirms)
    transport_options = {'confirm_publish': confirm}
    return kombu.Connection(url, transport_options=transport_options, ssl=_ssl_option(url))


def _open(url: str | None, single: bool = True, confirm: bool | None = None) -> kombu.Connection:
    """An open connection to ``url``; one attempt when it is one of several nodes."""
    connection = _connection(url, confirm)
    try:
        connection.ensure_connection(max_retries=1 if single else 0)
    except Exception:
        connection.release()
        raise
    return connection


def _ssl_option(url: str | None = None) -> Any:
    """Kombu's ``ssl`` argument from ``settings.CQRS['ssl_options']`` and the URL scheme.

    The broker's certificate is verified and, unless ``check_hostname`` is False, its name is
    checked against ``server_hostname`` (default: the host of the URL).
    """
    url = url or _node_urls()[0] or ''
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
    """``host:port/vhost`` of the connection's broker, safe to log (never the credentials)."""
    info = connection.info()
    return f'{info["hostname"]}:{info["port"]}/{info["virtual_host"]}'


def _errors(connection: kombu.Connection) -> tuple[type[BaseException], ...]:
    return (
        *connection.connection_errors,
        *connection.channel_errors,
        OSError,
        OperationalError,
    )


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
    """One connection and producer per process, reopened after ``fork()`` or an error.

    With several broker URLs, a connection goes to the first node that answers, starting at
    the node after the one that failed last (round-robin). A publish that fails on a broken
    connection is sent again on the next node (with publisher confirms, Kombu waits for the
    broker's confirm of each message, so nothing unconfirmed is left behind).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pid: int | None = None
        self._connection: kombu.Connection | None = None
        self._producer: kombu.Producer | None = None
        self._node = 0
        self.node_location: str | None = None
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
                    if self._connection is not None:
                        logger.warning(
                            'CQRS publish to %s failed (%s), retrying on a new connection.',
                            self.node_location,
                            type(exc).__name__,
                        )
                        self._node = next_node(self._node, len(_node_urls()))
                    self._drop()

    def _errors(self) -> tuple:
        return _errors(self._connection or _connection())

    def _ensure_open(self) -> kombu.Producer:
        if self._pid != os.getpid():
            self._connection = self._producer = None
            self._pid = os.getpid()
        if self._producer is None:
            urls = _node_urls()
            connections = [_connection(url) for url in urls]
            self._node, self._connection = connect_first_live(
                lambda index: _open(urls[index], single=len(urls) == 1),
                [_location(connection) for connection in connections],
                self._node,
                _errors(connections[0]),
            )
            self.node_location = _location(self._connection)
            self.connections_opened += 1
            if len(urls) > 1:
                logger.info('CQRS publisher is connected to %s.', self.node_location)
            self._producer = kombu.Producer(self._connection.channel())
            _exchange()(self._producer.channel).declare()
        return self._producer

    def close(self) -> None:
        """Close the connection; the next one tries the nodes from the first one again."""
        with self._lock:
            self._node = 0
            self._drop()

    def _drop(self) -> None:
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
        urls = _node_urls()
        probes = [_connection(url) for url in urls]
        consume_until_stopped(
            cls._stop,
            lambda index: _open(urls[index], single=len(urls) == 1),
            lambda connection: cls._consume_on(connection, cqrs_ids),
            lambda connection: connection.release(),
            _errors(probes[0]),
            [_location(probe) for probe in probes],
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
        arguments = replica_queue_arguments()
        queue, dead = (
            kombu.Queue(
                name, exchange, durable=True, bindings=bindings[name], queue_arguments=arguments
            )
            for name in (queue_name, cqrs_settings.replica.dead_letter_queue)
        )
        return queue, dead

    @classmethod
    def _declare(cls, queue: kombu.Queue, channel: Any) -> None:
        """Declare a queue; the other queue type already there raises ``CQRSConfigurationError``."""
        try:
            queue(channel).declare()
        except PreconditionFailed as exc:
            error = queue_type_error(queue.name, str(exc.reply_text or exc))
            if error:
                raise error from None
            raise

    @classmethod
    def _consume_on(cls, connection: kombu.Connection, cqrs_ids: Any) -> None:
        channel = connection.channel()
        queue, dead = cls._queues(cqrs_ids)
        cls._declare(queue, channel)
        cls._declare(dead, channel)
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
