"""Issue 13 item 1 on a real RabbitMQ: the transport reports publisher confirms through the
producer's callback; it knows nothing about the outbox, yet the confirms delete the rows.
"""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import transaction

from dj_cqrs import outbox
from dj_cqrs.transport import RabbitMQTransport
from tests.dj_master.models import SimplestModel
from tests.harness import outbox_rows_left, override_cqrs, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


# the conftest ``broker`` declares the replica queue and binds it to these routing keys
REPLICA_QUEUE_BINDINGS = ('simplest',)


@pytest.fixture
def queue_count(broker, names):
    """The message count of the replica queue (bound to ``simplest``)."""
    return lambda: broker.count(names['queue'])


@pytest.mark.parametrize('confirms', [True, False])
def test_item_01_rabbitmq_confirms_delete_the_outbox_rows(master, queue_count, confirms):
    master()
    outbox.flush_published()
    with override_cqrs(master={'outbox': True}, publisher_confirms=confirms):
        for pk in range(1, 51):
            SimplestModel.objects.create(id=pk, name=str(pk))
        with transaction.atomic():
            for pk in range(51, 101):
                SimplestModel.objects.create(id=pk, name=str(pk))
        SimplestModel.objects.get(id=1).delete()

        assert RabbitMQTransport.flush()
        assert outbox_rows_left() == []
    # Without publisher confirms nothing tells when the broker has routed the last message.
    wait_for(lambda: queue_count() >= 101, message='101 messages in the replica queue')
    assert queue_count() == 101


def test_item_01_rabbitmq_failures_keep_the_rows_for_the_relay(master, queue_count):
    master()
    outbox.flush_published()
    with override_cqrs(master={'outbox': True}, url='amqp://guest:guest@127.0.0.1:1/%2F'):
        for pk in range(1, 4):
            SimplestModel.objects.create(id=pk, name=str(pk))
        assert len(outbox_rows_left()) == 3

    with override_cqrs(master={'outbox': True}):
        err = io.StringIO()
        call_command('cqrs_relay', '--once', '--min-age', '0', '--database', 'default', stderr=err)
        assert 'Relayed 3 ' in err.getvalue()
        assert outbox_rows_left() == []
    assert queue_count() == 3
