"""The replica's dead-letter queue through Kombu (``cqrs_dead_letters`` with ``KombuTransport``).

The same operations as on RabbitMQ through pika: count the dead letters, take them one by one
without acknowledging them, publish a message back to the replica queue (confirmed), acknowledge,
put back in order what was taken and not acknowledged, purge. Works on every Kombu broker URL
the transport consumes from (``amqp://``, ``redis://``, ...).
"""

from __future__ import annotations

from typing import Any

import kombu

from dj_cqrs.transport._lifecycle import connect_first_live
from dj_cqrs.transport.kombu import (
    KombuTransport,
    _connection,
    _errors,
    _exchange,
    _location,
    _node_urls,
    _open,
    _publish_kwargs,
)


class DeadLetterError(Exception):
    """The broker cannot be reached."""


class KombuDeadLetters:
    """One connection to the replica's broker, its topology declared, for the dead letters."""

    def __init__(self) -> None:
        self.location = ''
        self._connection: kombu.Connection | None = None
        self._channel: Any = None
        self._dead: Any = None
        self._producer: kombu.Producer | None = None
        self._taken: dict[Any, Any] = {}

    def open(self) -> KombuDeadLetters:
        """Connect to the first node of ``CQRS['url']`` that answers (in failover order, as the
        transport does) and declare the replica's queues; ``DeadLetterError`` when none does."""
        urls = _node_urls()
        connections = [_connection(url, confirm=True) for url in urls]
        self.location = ', '.join(c.as_uri(include_password=False) for c in connections)
        errors = _errors(connections[0])
        try:
            _index, connection = connect_first_live(
                lambda index: _open(urls[index], single=len(urls) == 1, confirm=True),
                [_location(connection) for connection in connections],
                0,
                errors,
                who='cqrs_dead_letters',
            )
        except errors as exc:
            raise DeadLetterError(type(exc).__name__) from exc
        self.location = connection.as_uri(include_password=False)
        try:
            queue, dead = KombuTransport._queues(None)
            channel = connection.channel()
            queue(channel).declare()
            self._dead = dead(channel)
            self._dead.declare()
        except errors as exc:
            connection.release()
            raise DeadLetterError(type(exc).__name__) from exc
        self._connection, self._channel = connection, channel
        self._producer = kombu.Producer(connection.channel(), exchange=_exchange())
        return self

    def count(self) -> int:
        """Dead letters in the queue now."""
        # Declared, not checked passively: an empty queue does not exist on Redis.
        return self._dead.queue_declare().message_count

    def get(self) -> tuple[Any, bytes] | None:
        """The next dead letter, not acknowledged: ``(handle, body)``; None when there is none."""
        message = self._dead.get(no_ack=False, accept=None)
        if message is None:
            return None
        self._taken[message.delivery_tag] = message
        body = message.body
        return message.delivery_tag, body.encode() if isinstance(body, str) else body

    def ack(self, handle: Any) -> None:
        self._taken.pop(handle).ack()

    def publish(self, routing_key: str, body: bytes) -> None:
        """Publish ``body`` to the exchange (confirmed where the broker confirms)."""
        self._producer.publish(body.decode(), routing_key=routing_key, **_publish_kwargs())

    def purge(self) -> None:
        self._dead.purge()

    def close(self) -> None:
        """Put back, in their order, the dead letters taken and not acknowledged; disconnect."""
        taken, self._taken = list(self._taken.values()), {}
        try:
            restore = getattr(getattr(self._channel, 'qos', None), 'restore_by_tag', None)
            if restore is not None and taken:
                # Redis: each goes back to the head of the list, so the last one first.
                for message in reversed(taken):
                    restore(message.delivery_tag, leftmost=False)
            # AMQP: closing the channel requeues them in place.
            self._channel.close()
        finally:
            self._connection.release()
