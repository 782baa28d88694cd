"""``manage.py cqrs_dead_letters retry|dump|purge``: handle the replica's dead letters."""

from __future__ import annotations

from typing import Any

import pika
import ujson
from django.core.management.base import BaseCommand, CommandError

from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import DEFAULT_MASTER_MESSAGE_TTL
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.transport import KombuTransport, RabbitMQTransport, current_transport
from dj_cqrs.transport._kombu_dead_letters import DeadLetterError, KombuDeadLetters
from dj_cqrs.transport._lifecycle import connect_first_live
from dj_cqrs.transport.rabbit_mq import (
    all_connection_parameters,
    broker_location,
    broker_locations,
    message_properties,
)
from dj_cqrs.utils import get_message_expiration_dt


class _RabbitMQDeadLetters:
    """The dead-letter queue through pika; the interface of ``KombuDeadLetters``.

    With several nodes in ``CQRS['url']``, it connects to the first one that answers, in
    failover order, as the transport does.
    """

    def open(self) -> _RabbitMQDeadLetters:
        nodes = all_connection_parameters()
        try:
            _index, self._connection = connect_first_live(
                lambda index: pika.BlockingConnection(nodes[index]),
                [broker_location(params) for params in nodes],
                0,
                (pika.exceptions.AMQPError,),
                who='cqrs_dead_letters',
            )
        except pika.exceptions.AMQPError as exc:
            raise CommandError(
                f'Cannot connect to RabbitMQ at {broker_locations(nodes)}: {type(exc).__name__}.'
            ) from exc
        try:
            self._channel = self._connection.channel()
            RabbitMQTransport.declare_replica_topology(self._channel)
            self._channel.confirm_delivery()
        except BaseException:
            self._connection.close()
            raise
        self._queue = cqrs_settings.replica.dead_letter_queue
        return self

    def count(self) -> int:
        return self._channel.queue_declare(self._queue, passive=True).method.message_count

    def get(self) -> tuple[Any, bytes] | None:
        method, _properties, body = self._channel.basic_get(self._queue, auto_ack=False)
        return None if method is None else (method.delivery_tag, body)

    def ack(self, handle: Any) -> None:
        self._channel.basic_ack(handle)

    def publish(self, routing_key: str, body: bytes) -> None:
        self._channel.basic_publish(cqrs_settings.exchange, routing_key, body, message_properties())

    def purge(self) -> None:
        self._channel.queue_purge(self._queue)

    def close(self) -> None:
        # Closing the channel puts the unacknowledged messages back, in order.
        if self._connection.is_open:
            self._connection.close()


class Command(BaseCommand):
    help = (
        'Dead letters of this replica (RabbitMQ, or Kombu): "retry" sends them back to the '
        'replica queue with retries = 0, "dump" prints them as JSON lines, "purge" deletes them.'
    )

    def add_arguments(self, parser):
        parser.add_argument('command', choices=['retry', 'dump', 'purge'])

    def handle(self, *args, **options):
        transport = current_transport._resolve()
        if not issubclass(transport, RabbitMQTransport | KombuTransport):
            raise CommandError('Dead letters commands available only for RabbitMQTransport.')
        if not cqrs_settings.queue:
            raise CommandError("settings.CQRS['queue'] is not set: this is not a replica service.")
        if issubclass(transport, KombuTransport):
            queue = KombuDeadLetters()
            try:
                queue.open()
            except DeadLetterError as exc:
                raise CommandError(f'Cannot connect to {queue.location}: {exc}.') from exc
        else:
            queue = _RabbitMQDeadLetters().open()
        try:
            count = queue.count()
            getattr(self, f'_{options["command"]}')(queue, count)
        finally:
            queue.close()

    def _messages(self, queue, count: int):
        for _ in range(count):
            delivery = queue.get()
            if delivery is None:
                return
            yield delivery

    def _dump(self, queue, count: int) -> None:
        for _handle, body in self._messages(queue, count):
            self.stdout.write(body.decode('utf-8', errors='replace'))

    def _retry(self, queue, count: int) -> None:
        self.stdout.write(f'Total dead letters: {count}')
        messages = self._messages(queue, count)
        for number in range(1, count + 1):
            self.stdout.write(f'Retrying: {number}/{count}')
            delivery = next(messages, None)
            if delivery is None:
                break
            handle, body = delivery
            try:
                message = ujson.loads(body)
                message['retries'] = 0
                if message.get('expires'):
                    # It may have expired already: one more day from now.
                    expires = get_message_expiration_dt(DEFAULT_MASTER_MESSAGE_TTL)
                    message['expires'] = expires.replace(microsecond=0).isoformat()
                payload = TransportPayload.from_message(message)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # Left unacknowledged: it stays a dead letter when the queue is closed.
                self.stderr.write(f'Skipping a dead letter that is not a CQRS message: {exc}')
                continue
            routing_key = f'cqrs.{cqrs_settings.queue}.{payload.cqrs_id}'
            queue.publish(routing_key, ujson.dumps(payload.to_dict()).encode())
            self.stdout.write(ujson.dumps(message))
            queue.ack(handle)

    def _purge(self, queue, count: int) -> None:
        self.stdout.write(f'Total dead letters: {count}')
        if count > 0:
            queue.purge()
            self.stdout.write('Purged')
