"""Issue 10 item 3: SYNC batches published in bulk over RabbitMQ, and the back-off of
messages the broker refuses (item 1d of the relay faults: no flood of republishes and logs)."""

from __future__ import annotations

import io
import logging
from datetime import datetime, timezone
from types import SimpleNamespace

import pika
import pytest
from django.core.management import call_command

from dj_cqrs.constants import SignalType
from dj_cqrs.controller import producer
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.management.commands import cqrs_sync
from dj_cqrs.mixins import RawMasterMixin
from dj_cqrs.transport import RabbitMQTransport, rabbit_mq
from tests.dj_master.models import SimplestModel
from tests.harness import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

EXPIRES = datetime(2031, 2, 3, 4, 5, 6, tzinfo=timezone.utc)


def take_raw(channel, queue: str, number: int) -> list[tuple]:
    """Exactly ``number`` messages: (routing key, content type, delivery mode, body bytes)."""
    messages = []

    def collect():
        while len(messages) < number:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return False
            messages.append(
                (method.routing_key, properties.content_type, properties.delivery_mode, body)
            )
        return True

    wait_for(collect, message=f'{number} messages in {queue}')
    assert channel.basic_get(queue, auto_ack=True)[0] is None, 'more messages than expected'
    return messages


def payloads() -> list[TransportPayload]:
    big = 'x' * 300_000  # more than one body frame (frame_max 131072)
    return [
        TransportPayload(
            SignalType.SYNC, 'simplest', {'id': 1, 'name': 'é/"'}, 1, correlation_id='c1',
            expires=EXPIRES, meta={},
        ),
        TransportPayload(
            SignalType.SYNC, 'simplest', {'id': 2, 'name': big}, 2, queue='replica',
            correlation_id='c2', expires=EXPIRES,
        ),
        TransportPayload(SignalType.SAVE, 'other', {'id': 3}, 3, correlation_id='c3'),
        TransportPayload(SignalType.DELETE, 'simplest', {'id': 4}, 4, correlation_id='c4'),
    ]  # fmt: skip


def test_item_10_3_produce_many_puts_on_the_wire_what_produce_does(master, broker):
    master()
    queue = broker.capture()
    for payload in payloads():
        assert RabbitMQTransport.produce(payload) is True
    one_by_one = take_raw(broker.channel, queue, 4)

    writes = []
    RabbitMQTransport.produce(payloads()[0])  # the connection is open
    take_raw(broker.channel, queue, 1)
    impl = RabbitMQTransport._publisher._connection._impl
    original = impl._output_marshaled_frames
    impl._output_marshaled_frames = lambda frames: (writes.append(frames), original(frames))
    try:
        assert producer.produce_many(payloads()) == [True] * 4
    finally:
        del impl._output_marshaled_frames
    assert RabbitMQTransport.flush()
    assert take_raw(broker.channel, queue, 4) == one_by_one
    assert one_by_one[1][0] == 'cqrs.replica.simplest'
    assert len(writes) == 1, 'the frames of the batch are written at once'
    assert RabbitMQTransport._publisher.unconfirmed_count == 0


def test_item_10_3_cqrs_sync_bodies_over_rabbitmq_are_those_of_the_instance_path(
    master, broker, monkeypatch
):
    master()
    for pk in range(1, 8):
        SimplestModel.objects.create(id=pk, name=f'row {pk}' if pk % 2 else None)
    assert RabbitMQTransport.flush()
    queue = broker.capture('simplest')
    monkeypatch.setattr(cqrs_sync, 'get_message_expiration_dt', lambda: EXPIRES)
    monkeypatch.setattr(producer, 'get_message_expiration_dt', lambda: EXPIRES)
    bulk = []
    real = RabbitMQTransport.produce_many.__func__

    def produce_many(cls, batch):
        bulk.append(len(batch))
        return real(cls, batch)

    monkeypatch.setattr(RabbitMQTransport, 'produce_many', classmethod(produce_many))

    def sync() -> list[tuple]:
        out = io.StringIO()
        call_command('cqrs_sync', '--cqrs-id', 'simplest', '-f', '{}', '-b', '3', stdout=out)
        assert out.getvalue().endswith('7 instance(s) synced.\n7 instance(s) processed.\n')
        return take_raw(broker.channel, queue, 7)

    fast = sync()
    assert bulk == [3, 3, 1]
    bulk.clear()
    monkeypatch.setattr(RawMasterMixin, '_cqrs_row_serialization', classmethod(lambda cls: None))
    assert sync() == fast
    assert bulk == [1] * 7, 'the instance path publishes one message at a time'
    assert [ujson_pk(body) for *_, body in fast] == list(range(1, 8))


def ujson_pk(body: bytes) -> int:
    import json

    return json.loads(body)['instance_pk']


# --- refused messages: back-off -----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def nack(publisher, tag: int) -> None:
    frame = SimpleNamespace(method=pika.spec.Basic.Nack(delivery_tag=tag, multiple=False))
    publisher._on_confirm(frame)


def test_item_01d_refused_message_is_published_again_with_a_growing_delay(monkeypatch, caplog):
    """Each refusal doubles the delay before the next publish (up to the maximum); the
    refusal is logged once per message, later ones in a summary at most once a minute."""
    clock = Clock()
    monkeypatch.setattr(rabbit_mq.time, 'monotonic', clock)
    publisher = rabbit_mq._Publisher()
    publisher._confirms = True
    republished = []
    monkeypatch.setattr(publisher, '_basic_publish', lambda message: republished.append(clock()))
    reopened = []
    monkeypatch.setattr(publisher, '_reopen_channel', lambda: reopened.append(len(republished)))
    message = rabbit_mq._Message('x', 'simplest', b'{}', None, None)
    publisher._unconfirmed[1] = message
    caplog.set_level(logging.DEBUG, logger='django-cqrs')

    delays = []
    for attempt in range(12):
        nack(publisher, attempt + 1)
        assert publisher._nacked == [message]
        due = message.due
        delays.append(round(due - clock(), 3))
        clock.now = due - 0.001
        publisher._republish_nacked()
        assert len(republished) == attempt, 'published again before its delay was over'
        clock.now = due
        publisher._republish_nacked()
        assert len(republished) == attempt + 1
        assert publisher._nacked == []
        publisher._unconfirmed[attempt + 2] = message
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0]
    # Each time on a new channel, opened before publishing (RabbitMQ 3.10 may keep refusing
    # every publish of the channel that was refused: docs/transports.md, Running on a cluster).
    assert reopened == list(range(12))

    refusals = [r for r in caplog.records if 'refused' in r.getMessage()]
    # 12 refusals over about 111 s: the first logged, then one summary a minute at most.
    assert [r.levelname for r in refusals] == ['ERROR', 'WARNING', 'WARNING']


def test_item_01d_refused_messages_stay_counted_until_confirmed(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(rabbit_mq.time, 'monotonic', clock)
    publisher = rabbit_mq._Publisher()
    publisher._confirms = True
    delivered = []
    message = rabbit_mq._Message('x', 'simplest', b'{}', None, delivered.append)
    publisher._unconfirmed[1] = message
    nack(publisher, 1)
    assert publisher.unconfirmed_count == 1
    # A refusal is not a delivery: the outbox row stays, due for the relay at once (item 05).
    assert delivered == [False]
    monkeypatch.setattr(
        publisher, '_basic_publish', lambda m: publisher._unconfirmed.update({2: m})
    )
    monkeypatch.setattr(publisher, '_reopen_channel', lambda: None)
    clock.now += 1
    publisher._republish_nacked()
    ack = SimpleNamespace(method=pika.spec.Basic.Ack(delivery_tag=2, multiple=False))
    publisher._on_confirm(ack)
    assert delivered == [False, True]
    assert publisher.unconfirmed_count == 0
