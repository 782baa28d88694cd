"""``cqrs_dead_letters retry|dump|purge`` with ``KombuTransport`` (issue 11, item 6), on RabbitMQ
(``amqp://``) and on Redis (``redis://``).

The dead letters are made by a real Kombu replica worker (``cqrs_consume``) that cannot apply
them; the command prints exactly what it prints for ``RabbitMQTransport``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
import ujson
from django.core.management.base import CommandError
from django.test import override_settings

from tests.dj_master.models import FlakyModel
from tests.harness import (
    KOMBU,
    RABBIT,
    cqrs_settings_for,
    dead_letters,
    queue_depth,
    run_command,
    settle_publisher,
    wait_for,
)

EXPIRES = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$')
DEAD = 3


def counter(url: str, amqp_url: str, queue: str):
    return lambda: queue_depth(url if url.startswith('redis') else amqp_url, queue)


def dead_letter_bodies(url: str, amqp_url: str, names: dict) -> list[dict]:
    """The dead letters, next to be taken first (left in place)."""
    bodies = [body for body, _ in dead_letters(url, amqp_url, names['dead_letter_queue'])]
    # A Redis list is pushed on the left and popped on the right.
    return bodies[::-1] if url.startswith('redis') else bodies


@pytest.mark.django_db(transaction=True)
def test_item_06_dead_letters_dump_retry_purge_on_kombu(
    master,
    replica_service,
    kombu_url,  # noqa: F811
    amqp_url,
    names,
):
    dead_count = counter(kombu_url, amqp_url, names['dead_letter_queue'])
    queue_count = counter(kombu_url, amqp_url, names['queue'])
    replica = replica_service(transport=KOMBU, url=kombu_url, CQRS_TEST_MAX_RETRIES=0)
    replica.start('-w', '1').wait_ready()
    master(transport=KOMBU, url=kombu_url)
    for pk in range(1, DEAD + 1):
        FlakyModel.objects.create(id=pk, name=f'doomed ü/{pk}', always_fail=True)
    wait_for(lambda: dead_count() == DEAD, message=f'{DEAD} dead letters ({replica.log()[-3000:]})')
    assert replica.stop() == 0
    assert queue_count() == 0
    bodies = dead_letter_bodies(kombu_url, amqp_url, names)
    assert [(body['instance_pk'], body['retries']) for body in bodies] == [
        (pk, 0) for pk in range(1, DEAD + 1)
    ]

    with override_settings(CQRS=cqrs_settings_for(KOMBU, kombu_url, names)):
        # dump: each body on a line, as published; the dead letters stay, in their order.
        dumped = run_command('cqrs_dead_letters', 'dump')[0]
        assert dumped == ''.join(ujson.dumps(body) + '\n' for body in bodies)
        assert '"doomed \\u00fc\\/1"' in dumped
        assert run_command('cqrs_dead_letters', 'dump')[0] == dumped
        assert dead_count() == DEAD
        assert dead_letter_bodies(kombu_url, amqp_url, names) == bodies

        # retry: back to the replica queue with retries = 0 and a fresh expiry.
        before = datetime.now(tz=timezone.utc).replace(microsecond=0)
        retried = run_command('cqrs_dead_letters', 'retry')[0]
        after = datetime.now(tz=timezone.utc)
        lines = retried.split('\n')
        assert lines[0] == f'Total dead letters: {DEAD}'
        assert lines[1::2][:DEAD] == [f'Retrying: {n}/{DEAD}' for n in range(1, DEAD + 1)]
        assert lines[-1] == ''
        assert len(lines) == 2 + 2 * DEAD
        printed = [json.loads(line) for line in lines[2:-1:2]]
        for body, message, line in zip(bodies, printed, lines[2:-1:2], strict=True):
            assert EXPIRES.match(message['expires'])
            expires = datetime.fromisoformat(message['expires'])
            assert before + timedelta(days=1) <= expires <= after + timedelta(days=1)
            assert line == ujson.dumps({**body, 'retries': 0, 'expires': message['expires']})
        assert dead_count() == 0
        assert queue_count() == DEAD

    # The worker takes the retried messages again (and, as they still fail, dead-letters them).
    replica.start('-w', '1').wait_ready()
    wait_for(lambda: dead_count() == DEAD, message=f'{DEAD} dead letters again')
    assert queue_count() == 0
    assert replica.stop() == 0
    assert replica.log().count('is added to dead letter queue') == 2 * DEAD

    with override_settings(CQRS=cqrs_settings_for(KOMBU, kombu_url, names)):
        purged, _ = run_command('cqrs_dead_letters', 'purge')
        assert purged == f'Total dead letters: {DEAD}\nPurged\n'
        assert dead_count() == 0
        assert run_command('cqrs_dead_letters', 'purge')[0] == 'Total dead letters: 0\n'
        assert run_command('cqrs_dead_letters', 'retry')[0] == 'Total dead letters: 0\n'
        assert run_command('cqrs_dead_letters', 'dump')[0] == ''


def test_item_06_kombu_output_is_the_rabbitmq_output(amqp_url, names, broker):
    """The same dead letters in the same RabbitMQ queue: the two transports print the same."""
    bodies = [
        ujson.dumps({'signal_type': 'SAVE', 'cqrs_id': 'simplest', 'instance_data': {'id': pk},
                     'previous_data': None, 'instance_pk': pk, 'correlation_id': None,
                     'retries': 3, 'expires': None, 'meta': None})
        for pk in (1, 2)
    ] + ['not json']  # fmt: skip
    outputs = {}
    for transport in (RABBIT, KOMBU, RABBIT):
        with override_settings(CQRS=cqrs_settings_for(transport, amqp_url, names)):
            run_command('cqrs_dead_letters', 'dump')  # declares the topology
            for body in bodies:
                broker.channel.basic_publish('', names['dead_letter_queue'], body.encode())
            settle_publisher()
            dump = run_command('cqrs_dead_letters', 'dump')[0]
            retry = run_command('cqrs_dead_letters', 'retry')[0]
            purge = run_command('cqrs_dead_letters', 'purge')[0]
            outputs.setdefault(transport, []).append((dump, retry, purge))
    assert outputs[KOMBU][0] == outputs[RABBIT][0] == outputs[RABBIT][1]
    dump, retry, purge = outputs[KOMBU][0]
    assert dump == ''.join(body + '\n' for body in bodies)
    assert retry.startswith('Total dead letters: 3\nRetrying: 1/3\n')
    assert purge == 'Total dead letters: 1\nPurged\n', 'the one that is not a CQRS message'


@pytest.mark.parametrize('transport', ['dj_cqrs.transport.loopback.LoopbackTransport'])
def test_item_06_other_transports_keep_the_original_error(transport, names):
    settings = cqrs_settings_for(transport, 'amqp://unused', names)
    with override_settings(CQRS=settings), pytest.raises(CommandError) as error:
        run_command('cqrs_dead_letters', 'dump')
    assert str(error.value) == 'Dead letters commands available only for RabbitMQTransport.'


def test_item_06_unreachable_kombu_broker_is_a_command_error(names):
    url = 'redis://127.0.0.1:1/0'
    expected = r'^Cannot connect to redis://:\*\*@127\.0\.0\.1:1/0: \w+\.$'
    settings = cqrs_settings_for(KOMBU, url, names)
    with override_settings(CQRS=settings), pytest.raises(CommandError, match=expected):
        run_command('cqrs_dead_letters', 'purge')
