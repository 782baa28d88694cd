"""What the broker says of queues, for ``dj_cqrs.status`` (``manage.py cqrs_status``).

RabbitMQ (pika, or Kombu on an ``amqp://`` URL): a passive ``queue_declare`` gives the ready
messages and the consumers; the unacknowledged ones come from the management HTTP API
(``settings.CQRS['management_url']``, by default ``http://<broker host>:15672`` with the
broker's credentials), and are unknown (None) when it cannot be reached. Redis (Kombu): the
length of the queue's list gives the ready messages; consumers and unacknowledged messages are
unknown. Other Kombu transports: what the channel can count, else unknown.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import kombu
import pika
from pika import exceptions as pika_exceptions

from dj_cqrs.conf import cqrs_settings
from dj_cqrs.transport.kombu import KombuTransport, _errors, _node_urls, _ssl_option
from dj_cqrs.transport.rabbit_mq import (
    RabbitMQTransport,
    all_connection_parameters,
    broker_location,
    broker_locations,
)

# Seconds to wait for the broker, and for its management API.
TIMEOUT = 3.0
MANAGEMENT_PORT = 15672
MANAGEMENT_TLS_PORT = 15671


@dataclass
class QueueFigures:
    """Messages in one queue (None: unknown)."""

    name: str
    ready: int | None
    unacknowledged: int | None
    consumers: int | None


class BrokerUnreachable(Exception):
    """No broker node answered: ``location`` (no credentials) and a one-line ``reason``."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f'{location}: {reason}')
        self.location = location
        self.reason = reason


def inspect(transport: type, names: list[str]) -> tuple[str, list[QueueFigures]]:
    """Connect to the broker of ``transport`` and count the messages of the queues ``names``
    (none: only check that the broker answers). Returns the broker location and the figures.

    Raises ``BrokerUnreachable``. Transports without a broker give ``''`` and unknown figures.
    """
    if issubclass(transport, RabbitMQTransport):
        return _rabbitmq(names)
    if issubclass(transport, KombuTransport):
        return _kombu(names)
    return '', [QueueFigures(name, None, None, None) for name in names]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def _rabbitmq(names: list[str]) -> tuple[str, list[QueueFigures]]:
    nodes = all_connection_parameters()
    connection, failure = None, None
    for params in nodes:
        params.connection_attempts = 1
        params.retry_delay = 0
        params.socket_timeout = TIMEOUT
        params.stack_timeout = TIMEOUT
        params.blocked_connection_timeout = TIMEOUT
        try:
            connection = pika.BlockingConnection(params)
            break
        except (pika_exceptions.AMQPError, OSError, ValueError) as exc:
            failure = exc
    if connection is None:
        raise BrokerUnreachable(broker_locations(nodes), _reason(failure))
    try:
        counts = {}
        channel = connection.channel()
        for name in names:
            try:
                frame = channel.queue_declare(name, passive=True)
                counts[name] = (frame.method.message_count, frame.method.consumer_count)
            except pika_exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                counts[name] = (0, 0)  # not declared yet: nothing in it
                channel = connection.channel()
    except (pika_exceptions.AMQPError, OSError) as exc:
        raise BrokerUnreachable(broker_location(params), _reason(exc)) from exc
    finally:
        if connection.is_open:
            connection.close()
    credentials = params.credentials
    unacked = _management_unacked(
        names,
        params.host,
        bool(params.ssl_options),
        params.virtual_host,
        getattr(credentials, 'username', None),
        getattr(credentials, 'password', None),
    )
    figures = [
        QueueFigures(name, ready, unacked.get(name), consumers)
        for name, (ready, consumers) in counts.items()
    ]
    return broker_location(params), figures


def _kombu(names: list[str]) -> tuple[str, list[QueueFigures]]:
    locations, failure = [], None
    for url in _node_urls():
        connection = kombu.Connection(url, ssl=_ssl_option(url), connect_timeout=TIMEOUT)
        info = connection.info()
        location = f'{info["transport"]}://{info["hostname"]}:{info["port"]}/{info["virtual_host"]}'
        locations.append(location)
        try:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=TIMEOUT)
            return location, _kombu_figures(connection, info, names)
        except _errors(connection) as exc:
            failure = exc
        finally:
            connection.release()
    raise BrokerUnreachable(', '.join(locations), _reason(failure))


def _kombu_figures(connection: kombu.Connection, info: dict, names: list[str]) -> list:
    channel = connection.channel()
    if connection.transport.driver_type == 'redis':
        # The list's length, across priorities; acks and consumers are not kept per queue.
        return [QueueFigures(name, int(channel._size(name)), None, None) for name in names]
    if connection.transport.driver_type != 'amqp':
        size = getattr(channel, '_size', None)
        return [
            QueueFigures(name, None if size is None else int(size(name)), None, None)
            for name in names
        ]
    counts = {}
    for name in names:
        try:
            _queue, ready, consumers = channel.queue_declare(name, passive=True)
            counts[name] = (ready, consumers)
        except connection.channel_errors as exc:
            if getattr(exc, 'code', None) != 404 and getattr(exc, 'reply_code', None) != 404:
                raise
            counts[name] = (0, 0)
            channel = connection.channel()
    unacked = _management_unacked(
        names,
        info['hostname'],
        bool(info.get('ssl')),
        info['virtual_host'],
        info.get('userid'),
        info.get('password'),
    )
    return [
        QueueFigures(name, ready, unacked.get(name), consumers)
        for name, (ready, consumers) in counts.items()
    ]


def management_base_url(host: str, tls: bool) -> str | None:
    """The management API's base URL: the setting, else derived from the broker host; None
    when the setting is False."""
    configured = cqrs_settings.management_url
    if configured is False:
        return None
    if configured:
        return configured.rstrip('/')
    if tls:
        return f'https://{host}:{MANAGEMENT_TLS_PORT}'
    return f'http://{host}:{MANAGEMENT_PORT}'


def _management_unacked(
    names: list[str],
    host: str,
    tls: bool,
    vhost: str,
    username: str | None,
    password: str | None,
) -> dict[str, int]:
    """Unacknowledged messages per queue from the management API; queues it cannot tell are
    left out (unknown)."""
    base = management_base_url(host, tls)
    if base is None or not names:
        return {}
    parts = urlsplit(base)
    if parts.username is not None:
        username, password = unquote(parts.username), unquote(parts.password or '')
        netloc = parts.netloc.rpartition('@')[2]
        base = urlunsplit(parts._replace(netloc=netloc))
    headers = {}
    if username is not None:
        token = base64.b64encode(f'{username}:{password or ""}'.encode()).decode()
        headers['Authorization'] = f'Basic {token}'
    found: dict[str, int] = {}
    for name in names:
        url = f'{base}/api/queues/{quote(vhost or "/", safe="")}/{quote(name, safe="")}'
        value = _get_json(url, headers)
        if isinstance(value, dict) and isinstance(value.get('messages_unacknowledged'), int):
            found[name] = value['messages_unacknowledged']
        elif value is None:
            return found  # unreachable: no use asking for the next queue
    return found


def _get_json(url: str, headers: dict[str, str]) -> Any:
    """The JSON at ``url``; ``{}`` for an HTTP error (e.g. 404), None when unreachable."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read().decode())
    except urllib.error.HTTPError:
        return {}
    except (OSError, ValueError):
        return None
