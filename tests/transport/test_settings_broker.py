"""Issue 9, item 20a against RabbitMQ: settings the original accepts connect as they did."""

import pytest
from django.apps import apps
from django.test import override_settings

from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import SimplestModel
from tests.harness import RABBIT


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize('port', ['5672', ' 5672 ', 5672.0])
def test_item_20a_port_as_string_connects_to_rabbitmq(names, broker, port):
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
    capture = broker.capture()
    try:
        with override_settings(CQRS=demo):
            apps.get_app_config('dj_cqrs').ready()
            assert demo['master']['CQRS_MESSAGE_TTL'] == 86400
            SimplestModel.objects.create(id=1, name='demo')
            [(_, _, body)] = broker.take(capture, 1)
    finally:
        RabbitMQTransport.clean_connection()
    assert (body['signal_type'], body['cqrs_id'], body['instance_pk']) == ('SAVE', 'simplest', 1)
    assert broker.count(capture) == 0
