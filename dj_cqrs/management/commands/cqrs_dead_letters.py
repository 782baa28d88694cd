"""``manage.py cqrs_dead_letters retry|dump|purge``: handle the replica's dead letters."""

from __future__ import annotations

import pika
import ujson
from django.core.management.base import BaseCommand, CommandError

from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import DEFAULT_MASTER_MESSAGE_TTL
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.transport import RabbitMQTransport, current_transport
from dj_cqrs.transport.rabbit_mq import broker_location, connection_parameters, message_properties
from dj_cqrs.utils import get_message_expiration_dt


class Command(BaseCommand):
    help = (
        'Dead letters of this replica (RabbitMQ): "retry" sends them back to the replica queue '
        'with retries = 0, "dump" prints them as JSON lines, "purge" deletes them.'
    )

    def add_arguments(self, parser):
        parser.add_argument('command', choices=['retry', 'dump', 'purge'])

    def handle(self, *args, **options):
        transport = current_transport._resolve()
        if not issubclass(transport, RabbitMQTransport):
            raise CommandError('Dead letters commands available only for RabbitMQTransport.')
        if not cqrs_settings.queue:
            raise CommandError("settings.CQRS['queue'] is not set: this is not a replica service.")
        try:
            connection = pika.BlockingConnection(connection_parameters())
        except pika.exceptions.AMQPError as exc:
            raise CommandError(
                f'Cannot connect to RabbitMQ at {broker_location()}: {type(exc).__name__}.'
            ) from exc
        try:
            channel = connection.channel()
            RabbitMQTransport.declare_replica_topology(channel)
            dead_letter_queue = cqrs_settings.replica.dead_letter_queue
            count = channel.queue_declare(dead_letter_queue, passive=True).method.message_count
            getattr(self, f'_{options["command"]}')(channel, dead_letter_queue, count)
        finally:
            if connection.is_open:
                connection.close()

    def _messages(self, channel, queue: str, count: int):
        for _ in range(count):
            method, _properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return
            yield method, body

    def _dump(self, channel, queue: str, count: int) -> None:
        for _method, body in self._messages(channel, queue, count):
            self.stdout.write(body.decode('utf-8', errors='replace'))
        # Closing the channel puts the unacknowledged messages back, in order.
        channel.close()

    def _retry(self, channel, queue: str, count: int) -> None:
        channel.confirm_delivery()
        self.stdout.write(f'Total dead letters: {count}')
        messages = self._messages(channel, queue, count)
        for number in range(1, count + 1):
            self.stdout.write(f'Retrying: {number}/{count}')
            delivery = next(messages, None)
            if delivery is None:
                break
            method, body = delivery
            try:
                message = ujson.loads(body)
                message['retries'] = 0
                if message.get('expires'):
                    # It may have expired already: one more day from now.
                    expires = get_message_expiration_dt(DEFAULT_MASTER_MESSAGE_TTL)
                    message['expires'] = expires.replace(microsecond=0).isoformat()
                payload = TransportPayload.from_message(message)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # Left unacknowledged: it stays a dead letter when the channel closes.
                self.stderr.write(f'Skipping a dead letter that is not a CQRS message: {exc}')
                continue
            routing_key = f'cqrs.{cqrs_settings.queue}.{payload.cqrs_id}'
            channel.basic_publish(
                cqrs_settings.exchange,
                routing_key,
                ujson.dumps(payload.to_dict()).encode(),
                message_properties(),
            )
            self.stdout.write(ujson.dumps(message))
            channel.basic_ack(method.delivery_tag)

    def _purge(self, channel, queue: str, count: int) -> None:
        self.stdout.write(f'Total dead letters: {count}')
        if count > 0:
            channel.queue_purge(queue)
            self.stdout.write('Purged')
