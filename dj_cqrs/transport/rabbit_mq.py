"""RabbitMQ transport built on pika.

Publishing goes through one long-lived connection per process (``_Publisher``); consuming runs
a blocking loop per worker process with manual acks, retries and dead letters
(``dj_cqrs.transport._consuming``).
"""

from __future__ import annotations

import atexit
import os
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pika
import pika.frame
import pika.spec
import ujson
from pika import exceptions as pika_exceptions

from dj_cqrs._logging import logger
from dj_cqrs.conf import broker_urls, cqrs_settings
from dj_cqrs.constants import SignalType
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
from dj_cqrs.transport.base import BaseTransport, DeliveryCallback
from dj_cqrs.transport.mixins import LoggingMixin

_CONNECTION_ERRORS = (
    pika_exceptions.AMQPError,
    ConnectionError,
    OSError,
    AttributeError,
    ValueError,
)
_MAX_UNCONFIRMED = 10000
# Confirms are read by every publish; returned messages are dispatched every N publishes
# (and by flush()), which saves a poll per message.
_DISPATCH_EVERY = 64
# A message kept by the producer until it is delivered (it has a delivery callback: the outbox
# is on) fails at once for this long after a failed connection attempt, instead of making
# every request wait for its own attempt.
_UNREACHABLE_PAUSE = 1.0
# A message refused by the broker is published again after this delay, doubled at each
# refusal up to the maximum; refusals after the first are summarised this often at most.
_REFUSED_RETRY_MIN = 0.1
_REFUSED_RETRY_MAX = 30.0
_REFUSED_REPORT_EVERY = 60.0
_BODY_SIZE = struct.Struct('>Q')


def connection_parameters() -> pika.ConnectionParameters:
    """Connection parameters from ``settings.CQRS``: ``url``, or host/port/user/password.

    The vhost of the URL is used; ``amqps://`` URLs (or ``ssl_options``) connect with TLS.
    With several URLs, those of the first node (see ``all_connection_parameters``).
    """
    return all_connection_parameters()[0]


def all_connection_parameters() -> list[pika.ConnectionParameters]:
    """Connection parameters of every node of ``settings.CQRS['url']``, in failover order.

    ``url`` may hold several URLs separated by ``;`` or be a list of URLs; without ``url``,
    the one node of host/port/user/password.
    """
    urls = broker_urls(cqrs_settings.url)
    if not urls:
        params = pika.ConnectionParameters(
            host=cqrs_settings.host or 'localhost',
            port=cqrs_settings.port or 5672,
            credentials=pika.PlainCredentials(
                cqrs_settings.user or 'guest', cqrs_settings.password or 'guest'
            ),
        )
        return [_with_tls(params, '')]
    return [_with_tls(pika.URLParameters(url), url) for url in urls]


def _with_tls(params: pika.ConnectionParameters, url: str) -> pika.ConnectionParameters:
    tls = cqrs_settings.ssl_options
    if tls is not None or url.startswith('amqps://'):
        params.ssl_options = pika.SSLOptions(
            ssl_context(tls or {}), (tls or {}).get('server_hostname') or params.host
        )
    return params


def ssl_context(options: dict) -> ssl.SSLContext:
    """A client TLS context from ``settings.CQRS['ssl_options']``."""
    context = ssl.create_default_context(cafile=options.get('ca_certs'))
    context.check_hostname = options.get('check_hostname', True)
    if options.get('certfile'):
        context.load_cert_chain(options['certfile'], options.get('keyfile'))
    return context


def broker_location(params: pika.ConnectionParameters | None = None) -> str:
    """``host:port/vhost`` of the broker (the first node), safe to log (never the credentials)."""
    params = params or connection_parameters()
    return f'{params.host}:{params.port}/{params.virtual_host}'


def broker_locations(params: Sequence[pika.ConnectionParameters] | None = None) -> str:
    """``host:port/vhost`` of every node, separated by ``, ``."""
    return ', '.join(broker_location(p) for p in params or all_connection_parameters())


def message_properties(expiration: str | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(content_type='text/plain', delivery_mode=2, expiration=expiration)


def produced_routing_key(payload: TransportPayload) -> str:
    """``<cqrs_id>``, or ``cqrs.<queue>.<cqrs_id>`` for a SYNC addressed to one queue."""
    if payload.signal_type == SignalType.SYNC and payload.queue:
        return f'cqrs.{payload.queue}.{payload.cqrs_id}'
    return payload.cqrs_id


def _writes_frames(connection: pika.BlockingConnection) -> bool:
    """Whether pika's connection takes marshalled frames (pika 1.x): else messages are
    published one ``basic_publish`` at a time."""
    impl = getattr(connection, '_impl', None)
    return hasattr(impl, '_output_marshaled_frames') and hasattr(impl, '_body_max_length')


def _abandon(connection: pika.BlockingConnection) -> None:
    """Close a connection's socket at once: a Close handshake on a dead socket would block."""
    impl = getattr(connection, '_impl', None)
    sock = getattr(getattr(impl, '_transport', None), '_sock', None)
    ioloop = getattr(impl, 'ioloop', None)
    for close in (getattr(sock, 'close', None), getattr(ioloop, 'close', None)):
        try:
            if close is not None:
                close()
        except Exception:
            pass


def _report_failed(messages: Iterable[_Message]) -> None:
    """Tell the producer these messages are not delivered yet (refused, or their connection
    broke before the confirm); they are still published again, and confirmed later."""
    for message in messages:
        if message.on_delivery is not None:
            try:
                message.on_delivery(False)
            except Exception:
                logger.exception('CQRS delivery callback failed.')


class _Message:
    """One message of the publisher, kept until the broker confirms it."""

    __slots__ = ('exchange', 'routing_key', 'body', 'properties', 'on_delivery', 'refusals', 'due')

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Any,
        on_delivery: DeliveryCallback | None,
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties
        self.on_delivery = on_delivery
        self.refusals = 0
        self.due = 0.0


class _Publisher:
    """The process's publishing connection and channel.

    Opened on first use and reused; reopened after ``fork()`` or any connection or channel
    error. With publisher confirms, each message is kept until the broker confirms it and is
    published again on the next connection if the old one broke first; publishing does not
    wait for the confirm (``flush()`` does). A message's delivery callback is called with True
    on its confirm. A message the broker refuses (a nack, e.g. a full queue that rejects
    publishes) is published again after a delay that doubles at each refusal, up to
    ``_REFUSED_RETRY_MAX`` seconds; the first refusal of a message is logged, later ones only
    in a periodic summary.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pid: int | None = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._unconfirmed: dict[int, _Message] = {}
        self._nacked: list[_Message] = []
        self._next_tag = 0
        self._published = 0
        self._unreachable: str | None = None
        self._unreachable_until = 0.0
        self._confirms = False
        self._next_refusal_report = 0.0
        # The broker refused a message on the current channel (see _republish_nacked).
        self._refusing_channel = False
        # The node (index in all_connection_parameters()) to connect to first.
        self._node = 0
        self.node_location: str | None = None
        self.connections_opened = 0
        atexit.register(self._flush_at_exit)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Any,
        on_delivery: DeliveryCallback | None = None,
    ) -> bool:
        """Publish one message, retrying once on a fresh connection.

        Returns True when the broker will confirm it (``on_delivery(True)`` is then called on
        the confirm), False when confirms are off. A message with ``on_delivery`` fails at once
        while the broker was unreachable a moment ago.
        """
        return self.publish_many([_Message(exchange, routing_key, body, properties, on_delivery)])

    def publish_many(self, messages: list[_Message]) -> bool:
        """Publish messages in order, written to the socket together; as ``publish``.

        After a connection error the messages not published yet are published on a fresh
        connection (all of them when confirms are off: those written to the broken one may be
        lost). When that fails too, none of them is kept for a later connection.
        """
        if not messages:
            return self._confirms
        with self._lock:
            was_open = self._connection is not None and self._pid == os.getpid()
            sent = [0]
            try:
                try:
                    self._publish_batch(messages, sent)
                except _CONNECTION_ERRORS as exc:
                    if not was_open:
                        raise
                    logger.warning(
                        'CQRS publish to %s failed (%s), retrying on a new connection.',
                        self.node_location,
                        type(exc).__name__,
                    )
                    self._drop()
                    if not self._confirms:
                        sent[0] = 0
                    self._publish_batch(messages, sent)
            except _CONNECTION_ERRORS:
                self._forget(messages)
                raise
            return self._confirms

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the broker confirmed every message published so far."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._unconfirmed or self._nacked:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    self._ensure_open(fail_fast=True)
                    self._connection.process_data_events(time_limit=min(remaining, 0.05))
                    self._republish_nacked()
                except _CONNECTION_ERRORS:
                    self._drop()
                    time.sleep(min(0.2, max(remaining, 0)))
            return True

    def close(self) -> None:
        """Close the connection (messages not yet confirmed are kept for the next one); the next
        connection tries the nodes from the first one again."""
        with self._lock:
            self._node = 0
            if self._pid == os.getpid() and self._connection is not None:
                try:
                    if self._connection.is_open:
                        self._connection.close()
                except _CONNECTION_ERRORS:
                    pass
            self._connection = self._channel = None
            self._unreachable = None

    @property
    def unconfirmed_count(self) -> int:
        return len(self._unconfirmed) + len(self._nacked)

    def _publish_batch(self, messages: list[_Message], sent: list[int]) -> None:
        """Publish ``messages[sent[0]:]``, counting in ``sent[0]``: their AMQP frames are
        written to the socket together."""
        # A callback that only counts (metrics) does not make the message one that is kept.
        self._ensure_open(
            fail_fast=any(
                getattr(m.on_delivery, 'keeps_message', m.on_delivery is not None) for m in messages
            )
        )
        pending = messages[sent[0] :]
        if len(pending) == 1 or not _writes_frames(self._connection):
            for message in pending:
                self._basic_publish(message)
                sent[0] += 1
        elif pending:
            self._write_frames(pending)
            sent[0] += len(pending)
            self._connection.process_data_events(time_limit=0)  # writes them out
        previous = self._published
        self._published += len(pending)
        if self._nacked or self._published // _DISPATCH_EVERY != previous // _DISPATCH_EVERY:
            self._connection.process_data_events(time_limit=0)
            self._republish_nacked()
        if len(self._unconfirmed) > _MAX_UNCONFIRMED:
            self.flush()

    def _write_frames(self, messages: list[_Message]) -> None:
        """Buffer the frames ``basic_publish`` would send for each message, as one write.

        The method frame of a routing key and the properties of a header frame are marshalled
        once (by pika); only the body size and the body differ from one message to the next.
        """
        channel = self._channel._impl
        if not channel.is_open:
            raise pika_exceptions.ChannelWrongStateError('Channel is closed.')
        number = channel.channel_number
        connection = self._connection._impl
        max_body = connection._body_max_length
        methods: dict[tuple[str, str], bytes] = {}
        headers: dict[int, bytes] = {}
        frames = []
        tags = []
        for message in messages:
            key = (message.exchange, message.routing_key)
            method = methods.get(key)
            if method is None:
                publish = pika.spec.Basic.Publish(
                    exchange=message.exchange, routing_key=message.routing_key, mandatory=True
                )
                method = methods[key] = pika.frame.Method(number, publish).marshal()
            header = headers.get(id(message.properties))
            if header is None:
                header = pika.frame.Header(number, 0, message.properties).marshal()
                headers[id(message.properties)] = header
            body = message.body
            frames.append(method)
            # The body size is the 8 bytes after the frame header, class id and weight.
            frames.append(header[:11] + _BODY_SIZE.pack(len(body)) + header[19:])
            for start in range(0, len(body), max_body):
                frames.append(pika.frame.Body(number, body[start : start + max_body]).marshal())
            if self._confirms:
                self._next_tag += 1
                self._unconfirmed[self._next_tag] = message
                tags.append(self._next_tag)
        try:
            connection._output_marshaled_frames([b''.join(frames)])
        except BaseException:
            for tag in tags:
                self._unconfirmed.pop(tag, None)
            raise

    def _basic_publish(self, message: _Message, publish: Any = None) -> None:
        if self._confirms:
            # Registered first: the confirm may arrive while basic_publish flushes the socket.
            self._next_tag += 1
            self._unconfirmed[self._next_tag] = message
        try:
            (publish or self._channel.basic_publish)(
                message.exchange,
                message.routing_key,
                message.body,
                message.properties,
                mandatory=True,
            )
        except BaseException:
            if self._confirms:
                self._unconfirmed.pop(self._next_tag, None)
            raise

    def _forget(self, messages: list[_Message]) -> None:
        """Stop tracking ``messages`` (they are reported as not sent)."""
        ids = {id(message) for message in messages}
        self._unconfirmed = {
            tag: message for tag, message in self._unconfirmed.items() if id(message) not in ids
        }
        self._nacked = [message for message in self._nacked if id(message) not in ids]

    def _ensure_open(self, fail_fast: bool = False) -> None:
        if self._pid != os.getpid():
            self._connection = self._channel = None
            self._unconfirmed.clear()
            self._nacked.clear()
            self._pid = os.getpid()
        if (
            self._connection is not None
            and self._connection.is_open
            and self._channel is not None
            and self._channel.is_open
        ):
            return
        self._drop()
        nodes = all_connection_parameters()
        locations = [broker_location(params) for params in nodes]
        location = ', '.join(locations)
        if (
            fail_fast
            and self._unreachable == location
            and time.monotonic() < self._unreachable_until
        ):
            raise pika_exceptions.AMQPConnectionError(f'{location} was unreachable a moment ago')
        try:
            self._node, self._connection = connect_first_live(
                lambda index: pika.BlockingConnection(nodes[index]),
                locations,
                self._node,
                _CONNECTION_ERRORS,
            )
        except _CONNECTION_ERRORS:
            self._unreachable = location
            self._unreachable_until = time.monotonic() + _UNREACHABLE_PAUSE
            raise
        self._unreachable = None
        self.node_location = locations[self._node]
        self.connections_opened += 1
        if len(nodes) > 1:
            logger.info('CQRS publisher is connected to %s.', self.node_location)
        self._open_channel()

    def _open_channel(self) -> None:
        """Open the publishing channel on the connection; publish on it again the messages
        not confirmed yet (they may have been written to a previous channel or connection)."""
        self._refusing_channel = False
        channel = self._connection.channel()
        channel.exchange_declare(cqrs_settings.exchange, 'topic', durable=True)
        channel.add_on_return_callback(self._on_return)
        self._confirms = bool(cqrs_settings.publisher_confirms)
        if self._confirms:
            channel._impl.confirm_delivery(ack_nack_callback=self._on_confirm)
        self._channel = channel
        self._next_tag = 0
        pending = list(self._unconfirmed.values())
        self._unconfirmed.clear()
        published = 0
        try:
            for message in pending:
                self._basic_publish(message)
                published += 1
        finally:
            # Left over when the new connection broke too: kept for the next one.
            for message in pending[published:]:
                self._next_tag += 1
                self._unconfirmed[self._next_tag] = message

    def _drop(self) -> None:
        """Forget a broken connection without a close handshake (its socket may be dead).

        Unconfirmed messages wait for the next connection.
        """
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and self._pid == os.getpid():
            _abandon(connection)
            _report_failed(self._unconfirmed.values())
            # The node failed: the next connection tries the following one first.
            self._node = next_node(self._node, len(broker_urls(cqrs_settings.url)) or 1)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = (
            [tag for tag in self._unconfirmed if tag <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        nack = isinstance(method, pika.spec.Basic.Nack)
        for tag in tags:
            message = self._unconfirmed.pop(tag, None)
            if message is None:
                continue
            if nack:
                self._refusing_channel = True
                self._refused(message)
            elif message.on_delivery is not None:
                try:
                    message.on_delivery(True)
                except Exception:
                    logger.exception('CQRS confirm callback failed.')

    def _refused(self, message: _Message) -> None:
        """Schedule a refused message again, later at each refusal; log it once."""
        message.refusals += 1
        delay = min(_REFUSED_RETRY_MAX, _REFUSED_RETRY_MIN * 2 ** (message.refusals - 1))
        now = time.monotonic()
        message.due = now + delay
        self._nacked.append(message)
        if message.refusals == 1:
            _report_failed([message])
            logger.error(
                'CQRS message was refused by the broker (routing key %s); '
                'publishing it again later.',
                message.routing_key,
            )
        elif now >= self._next_refusal_report:
            self._next_refusal_report = now + _REFUSED_REPORT_EVERY
            logger.warning(
                'CQRS: %s message(s) are still refused by the broker (routing key %s); '
                'publishing them again every %s s at most.',
                len(self._nacked),
                message.routing_key,
                _REFUSED_RETRY_MAX,
            )

    def _republish_nacked(self) -> None:
        """Publish again the refused messages whose delay is over."""
        if not self._nacked:
            return
        now = time.monotonic()
        due = [message for message in self._nacked if message.due <= now]
        if not due:
            return
        self._nacked = [message for message in self._nacked if message.due > now]
        try:
            if self._refusing_channel:
                self._reopen_channel()
            while due:
                self._basic_publish(due[0])
                due.pop(0)
        finally:
            self._nacked.extend(due)

    def _reopen_channel(self) -> None:
        """Replace a channel on which the broker refused a message by a new one.

        RabbitMQ 3.10 keeps refusing (nacking) every later publish to a quorum queue on a
        channel that published to it while the queue had no leader (its leader's node was
        lost), long after a new leader was elected, whereas a new channel is accepted at once:
        refused messages are therefore always published again on a new channel. The old
        channel is closed first (its pending confirms are read); the messages it has not
        confirmed are published again on the new one.
        """
        channel, self._channel = self._channel, None
        try:
            if channel is not None and channel.is_open:
                channel.close()
        except pika_exceptions.ChannelClosed:
            pass
        self._open_channel()

    @staticmethod
    def _on_return(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        logger.warning(
            'CQRS message was returned by the broker: %s %s (exchange %s, routing key %s); '
            'no queue is bound to it.',
            method.reply_code,
            method.reply_text,
            method.exchange,
            method.routing_key,
        )

    def _flush_at_exit(self) -> None:
        if self._pid == os.getpid() and self.unconfirmed_count and not self.flush(timeout=5):
            logger.error(
                'CQRS: %s published messages were not confirmed by the broker at exit.',
                self.unconfirmed_count,
            )
        self.close()


class RabbitMQTransport(BrokerTransportMixin, LoggingMixin, BaseTransport):
    """Transport over RabbitMQ (AMQP 0-9-1) with pika."""

    _publisher = _Publisher()
    _stop = StopFlag()
    reports_delivery = True

    @classmethod
    def produce(cls, payload: TransportPayload) -> bool:
        """Publish one payload; False (logged) when the broker cannot be reached.

        The payload's delivery callback is called on the broker's confirm (at once when
        publisher confirms are off).
        """
        return cls.produce_many([payload])[0]

    @classmethod
    def produce_many(cls, payloads: Sequence[TransportPayload]) -> list[bool]:
        """Publish payloads in order, written to the broker together; per payload, as
        ``produce``.

        Every body is encoded before anything is sent: a payload that cannot be encoded
        raises and none of them is published.
        """
        properties = message_properties()
        exchange = cqrs_settings.exchange
        messages = [
            _Message(
                exchange,
                produced_routing_key(payload),
                ujson.dumps(payload.to_dict()).encode(),
                properties,
                cls.delivery_callback(payload),
            )
            for payload in payloads
        ]
        try:
            confirmed = cls._publisher.publish_many(messages)
        except _CONNECTION_ERRORS as exc:
            location = broker_locations()
            for payload in payloads:
                logger.error(
                    "CQRS couldn't be published: pk = %s (%s). Error: %s, broker %s.",
                    payload.pk,
                    payload.cqrs_id,
                    type(exc).__name__,
                    location,
                )
            return [False] * len(messages)
        for payload, message in zip(payloads, messages, strict=True):
            if message.on_delivery is not None and not confirmed:
                message.on_delivery(True)
            cls.log_produced(payload)
        return [True] * len(messages)

    @classmethod
    def flush(cls, timeout: float = 10.0) -> bool:
        """Wait until the broker confirmed every message this process published."""
        return cls._publisher.flush(timeout)

    @classmethod
    def consume(cls, cqrs_ids: Iterable[str] | None = None, **kwargs: Any) -> None:
        """Consume the replica queue until SIGTERM / SIGINT, reconnecting after broker loss."""
        cls._stop.install()
        nodes = all_connection_parameters()
        locations = [broker_location(params) for params in nodes]
        current = [0]

        def connect(index: int) -> pika.BlockingConnection:
            current[0] = index
            return pika.BlockingConnection(nodes[index])

        consume_until_stopped(
            cls._stop,
            connect,
            lambda connection: cls._consume_on(connection, cqrs_ids, locations[current[0]]),
            lambda connection: connection.is_open and connection.close(),
            _CONNECTION_ERRORS,
            locations,
            cls.CONSUMER_RETRY_TIMEOUT,
            cls.MAX_RECONNECT_DELAY,
        )

    @classmethod
    def _consume_on(
        cls, connection: pika.BlockingConnection, cqrs_ids: Any, location: str | None = None
    ) -> None:
        queue = cqrs_settings.queue
        exchange = cqrs_settings.exchange
        channel = connection.channel()
        cls.declare_replica_topology(channel, cqrs_ids)
        from dj_cqrs.utils import get_messages_prefetch_count_per_worker

        channel.basic_qos(prefetch_count=get_messages_prefetch_count_per_worker())
        publish_channel = connection.channel()
        publish_channel.confirm_delivery()

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            worker.receive(Delivery(body, method.routing_key, method.delivery_tag))

        def publish(routing_key: str, body: str, expiration: str | None) -> None:
            try:
                publish_channel.basic_publish(
                    exchange,
                    routing_key,
                    body.encode(),
                    message_properties(expiration),
                    mandatory=True,
                )
            except pika_exceptions.UnroutableError:
                logger.error('CQRS message to %s could not be routed: dropped.', routing_key)

        worker = Worker(
            cls,
            queue,
            ack=lambda delivery_tag: channel.basic_ack(delivery_tag),
            reject=lambda delivery_tag: channel.basic_reject(delivery_tag, requeue=False),
            publish=publish,
            ack_through=lambda delivery_tag: channel.basic_ack(delivery_tag, multiple=True),
        )
        channel.basic_consume(queue, on_message, auto_ack=False)
        logger.info('CQRS consumer is ready: queue %s at %s.', queue, location or broker_location())
        worker.run(cls._stop, lambda timeout: connection.process_data_events(time_limit=timeout))

    @classmethod
    def declare_replica_topology(cls, channel: Any, cqrs_ids: Iterable[str] | None = None):
        """Declare the exchange, the replica queue, the dead-letter queue and their bindings.

        The queues are quorum queues with ``CQRS['replica']['queue_type'] = 'quorum'``. A queue
        that exists with the other type raises ``CQRSConfigurationError`` saying how to
        migrate.
        """
        exchange = cqrs_settings.exchange
        queue = cqrs_settings.queue
        dead_letter_queue = cqrs_settings.replica.dead_letter_queue
        arguments = replica_queue_arguments()
        channel.exchange_declare(exchange, 'topic', durable=True)
        for queue_name in (queue, dead_letter_queue):
            try:
                channel.queue_declare(queue_name, durable=True, arguments=arguments)
            except pika_exceptions.ChannelClosedByBroker as exc:
                error = exc.reply_code == 406 and queue_type_error(queue_name, exc.reply_text)
                if error:
                    raise error from None
                raise
        for queue_name, routing_key in replica_bindings(cqrs_ids):
            channel.queue_bind(queue_name, exchange, routing_key)
