"""Issue 9, item 20a against RabbitMQ: settings the original accepts connect as they did."""

import pika
import pytest
import ujson
from django.apps import apps
from django.test import override_settings

from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import SimplestModel
from tests.harness import RABBIT, wait_for


@pytest.fixture
def capture(amqp_url, names):
    """A queue bound to the test exchange for every routing key: [body dict, ...] received."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.exchange_declare(names['exchange'], 'topic', durable=True)
    channel.queue_declare(names['queue'], durable=True)
    channel.queue_bind(names['queue'], names['exchange'], '#')

    def received():
        bodies = []
        while True:
            method, _, body = channel.basic_get(names['queue'], auto_ack=True)
            if method is None:
                return bodies
            bodies.append(ujson.loads(body))

    yield received
    connection.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize('port', ['5672', ' 5672 ', 5672.0])
def test_item_20a_port_as_string_connects_to_rabbitmq(names, capture, port):
    """django-cqrs's demo project writes ``'port': '5672'``; it starts and publishes."""
    demo = {
        'transport': RABBIT,
        'host': '127.0.0.1',
        'port': port,
        'user': 'guest',
        'password': 'guest',
        'exchange': names['exchange'],
        'queue': names['queue'],
    }
    try:
        with override_settings(CQRS=demo):
            apps.get_app_config('dj_cqrs').ready()
            assert demo['master']['CQRS_MESSAGE_TTL'] == 86400
            SimplestModel.objects.create(id=1, name='demo')
            bodies = wait_for(capture, message=f'the SAVE published through port {port!r}')
    finally:
        RabbitMQTransport.clean_connection()
    assert [(b['signal_type'], b['cqrs_id'], b['instance_pk']) for b in bodies] == [
        ('SAVE', 'simplest', 1)
    ]
