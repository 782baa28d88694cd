"""Item 26: ``cqrs_dead_letters retry | dump | purge`` print what django-cqrs prints, against a
real RabbitMQ (the dead letters are put in the dead-letter queue by the test itself)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
import ujson
from django.test import override_settings

from dj_cqrs.transport import RabbitMQTransport
from tests.harness import RABBIT, cqrs_settings_for, run_command

EXPIRES = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$')


@pytest.fixture
def replica(names, amqp_url, broker):
    """Settings of a replica service under unique names, and the ``broker`` (its queues
    declared as the replica declares them)."""
    with override_settings(CQRS=cqrs_settings_for(RABBIT, amqp_url, names)):
        RabbitMQTransport.declare_replica_topology(broker.channel)
        yield broker


def dead_letter(pk: int, expires: str | None) -> bytes:
    """A message body as a replica dead-letters it (retries used up)."""
    body = {
        'signal_type': 'SAVE',
        'cqrs_id': 'simplest',
        'instance_data': {'id': pk, 'name': f'a/b ü {pk}', 'cqrs_revision': 0},
        'previous_data': None,
        'instance_pk': pk,
        'correlation_id': None,
        'retries': 3,
        'expires': expires,
        'meta': None,
    }
    return ujson.dumps(body).encode()


def put_dead_letters(broker, names: dict, *bodies: bytes) -> None:
    for body in bodies:
        broker.channel.basic_publish('', names['dead_letter_queue'], body)


def test_item_26_retry_prints_each_message_and_requeues_it(replica, names):
    expired = dead_letter(1, '2020-01-01T00:00:00+00:00')
    no_expiry = dead_letter(2, None)
    put_dead_letters(replica, names, expired, no_expiry)
    before = datetime.now(tz=timezone.utc).replace(microsecond=0)

    out = run_command('cqrs_dead_letters', 'retry')[0]

    after = datetime.now(tz=timezone.utc)
    lines = out.split('\n')
    assert lines[:2] == ['Total dead letters: 2', 'Retrying: 1/2']
    assert lines[3] == 'Retrying: 2/2'
    assert lines[5:] == ['']
    # The printed message: the body with retries = 0 and, when it had one, a new expiry one
    # day from now (whole seconds), written as ujson writes it.
    first = json.loads(lines[2])
    assert EXPIRES.match(first['expires'])
    new_expiry = datetime.fromisoformat(first['expires'])
    assert before + timedelta(days=1) <= new_expiry <= after + timedelta(days=1)
    expected = {**ujson.loads(expired), 'retries': 0, 'expires': first['expires']}
    assert lines[2] == ujson.dumps(expected)
    assert '"a\\/b \\u00fc 1"' in lines[2]
    assert lines[4] == ujson.dumps({**ujson.loads(no_expiry), 'retries': 0})

    assert replica.count(names['dead_letter_queue']) == 0
    requeued = [(key, body) for key, _, body in replica.take(names['queue'], 2)]
    assert [key for key, _ in requeued] == [f'cqrs.{names["queue"]}.simplest'] * 2
    assert [(body['instance_pk'], body['retries']) for _, body in requeued] == [(1, 0), (2, 0)]
    assert requeued[0][1]['expires'] == first['expires']
    assert requeued[1][1]['expires'] is None
    assert requeued[0][1]['instance_data'] == ujson.loads(expired)['instance_data']


def test_item_26_dump_prints_each_body_and_keeps_them(replica, names):
    bodies = [dead_letter(1, None), dead_letter(2, '2030-01-01T00:00:00+00:00')]
    put_dead_letters(replica, names, *bodies)

    out = run_command('cqrs_dead_letters', 'dump')[0]

    assert out == ''.join(body.decode() + '\n' for body in bodies)
    assert replica.count(names['dead_letter_queue']) == 2


def test_item_26_purge(replica, names):
    put_dead_letters(replica, names, dead_letter(1, None), dead_letter(2, None))

    assert run_command('cqrs_dead_letters', 'purge')[0] == 'Total dead letters: 2\nPurged\n'
    assert replica.count(names['dead_letter_queue']) == 0


def test_item_26_empty_queue(replica, names):
    assert run_command('cqrs_dead_letters', 'purge')[0] == 'Total dead letters: 0\n'
    assert run_command('cqrs_dead_letters', 'retry')[0] == 'Total dead letters: 0\n'
    assert run_command('cqrs_dead_letters', 'dump')[0] == ''
    assert replica.count(names['queue']) == 0
