"""Issue 13 item 1: one publishing pipeline; a transport knows nothing about the outbox.

``tests/custom_transport.py`` holds a third-party transport whose broker confirms messages
later, from its own thread, through the callback the producer gives it. With the outbox on,
its confirms delete the outbox rows and its refusals keep them for ``cqrs_relay``.
"""

import ast
import copy
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.db import transaction
from django.test import override_settings

from dj_cqrs import outbox
from tests import custom_transport
from tests.custom_transport import Broker, ConfirmingTransport, PlainTransport
from tests.dj_master.models import SimplestModel
from tests.harness import outbox_rows_left, relay_outbox

pytestmark = pytest.mark.django_db(transaction=True)


def cqrs(transport, outbox_on=True):
    conf = copy.deepcopy(settings.CQRS)
    conf['transport'] = f'tests.custom_transport.{transport.__name__}'
    conf.setdefault('master', {})['outbox'] = outbox_on
    return override_settings(CQRS=conf)


@pytest.fixture
def confirming_broker():
    """``ConfirmingTransport`` with the outbox on; its broker starts paused."""
    outbox.flush_published()
    broker = ConfirmingTransport.broker = Broker()
    with cqrs(ConfirmingTransport):
        yield broker
    broker.stop()
    ConfirmingTransport.broker = None
    outbox.flush_published()


@pytest.fixture
def plain():
    outbox.flush_published()
    PlainTransport.sent = []
    PlainTransport.down = False
    with cqrs(PlainTransport):
        yield PlainTransport
    outbox.flush_published()


def test_item_01_custom_transport_imports_nothing_from_the_outbox():
    tree = ast.parse(Path(custom_transport.__file__).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert {name for name in imported if name.startswith('dj_cqrs')} == {'dj_cqrs.transport.base'}


def test_item_01_custom_transport_confirms_delete_the_outbox_rows(confirming_broker):
    with transaction.atomic():
        SimplestModel.objects.create(id=1, name='one')
        SimplestModel.objects.create(id=2, name='two')
    obj = SimplestModel.objects.create(id=3, name='three')
    obj.delete()

    # Sent, not confirmed yet: the rows wait for the confirms.
    assert outbox_rows_left('instance_pk', 'signal_type') == [
        ('1', 'SAVE'),
        ('2', 'SAVE'),
        ('3', 'SAVE'),
        ('3', 'DELETE'),
    ]

    confirming_broker.paused.set()
    assert confirming_broker.wait_settled()
    assert [(p.signal_type, p.pk) for p in confirming_broker.confirmed] == [
        ('SAVE', 1),
        ('SAVE', 2),
        ('SAVE', 3),
        ('DELETE', 3),
    ]
    assert outbox_rows_left('instance_pk', 'signal_type') == []


def test_item_01_custom_transport_refusals_keep_the_rows_for_the_relay(confirming_broker):
    confirming_broker.refuse = True
    confirming_broker.paused.set()
    SimplestModel.objects.create(id=1, name='one')
    with transaction.atomic():
        SimplestModel.objects.create(id=2, name='two')
    assert confirming_broker.wait_settled()
    assert [p.pk for p in confirming_broker.refused] == [1, 2]
    assert outbox_rows_left('instance_pk', 'signal_type') == [('1', 'SAVE'), ('2', 'SAVE')]

    confirming_broker.refuse = False
    assert 'Relayed 2 ' in relay_outbox()

    assert [p.pk for p in confirming_broker.confirmed] == [1, 2]
    assert outbox_rows_left('instance_pk', 'signal_type') == []


def test_item_01_relay_keeps_the_batch_until_confirmed_and_late_confirms_delete_it(
    confirming_broker, monkeypatch
):
    confirming_broker.refuse = True
    confirming_broker.paused.set()
    SimplestModel.objects.create(id=1, name='one')
    assert confirming_broker.wait_settled()
    confirming_broker.refuse = False
    confirming_broker.paused.clear()
    monkeypatch.setattr(ConfirmingTransport, 'flush_timeout', 0.2)

    with pytest.raises(CommandError, match='did not confirm'):
        relay_outbox()
    assert outbox_rows_left('instance_pk', 'signal_type') == [('1', 'SAVE')]

    confirming_broker.paused.set()
    assert confirming_broker.wait_settled()
    assert [p.pk for p in confirming_broker.confirmed] == [1]
    assert outbox_rows_left('instance_pk', 'signal_type') == []


def test_item_01_outbox_off_gives_no_callback_and_writes_no_row(confirming_broker):
    with override_settings(CQRS={**settings.CQRS, 'master': {'outbox': False}}):
        confirming_broker.paused.set()
        SimplestModel.objects.create(id=1, name='one')
        assert confirming_broker.wait_settled()
    [payload] = confirming_broker.confirmed
    assert ConfirmingTransport.delivery_callback(payload) is None
    assert outbox_rows_left('instance_pk', 'signal_type') == []


def test_item_01_transport_without_confirms_non_false_return_is_published(plain):
    SimplestModel.objects.create(id=1, name='one')
    assert [p.pk for p in plain.sent] == [1]
    assert outbox_rows_left('instance_pk', 'signal_type') == []

    plain.down = True
    SimplestModel.objects.create(id=2, name='two')
    assert outbox_rows_left('instance_pk', 'signal_type') == [('2', 'SAVE')]

    plain.down = False
    assert 'Relayed 1 ' in relay_outbox()
    assert [p.pk for p in plain.sent] == [1, 2]
    assert outbox_rows_left('instance_pk', 'signal_type') == []
