"""Dead letters after failed retries, and ``cqrs_dead_letters retry`` bringing them back.

Services of the core test project (``tests.settings_broker``): a master process publishing
``FlakyModel`` rows and a replica whose ``FlakyReplica.cqrs_save`` fails (falsy result) the
first ``fail_times`` attempts per pk, or always with ``always_fail``. It counts attempts in
``FlakyAttempt``. With ``CQRS_MAX_RETRIES=1`` a message is tried twice, then dead-lettered.
"""

from __future__ import annotations

import json

from tests.harness import wait_for

CREATE = """
import json
from tests.dj_master.models import FlakyModel
FlakyModel.objects.create(id=1, name='recovers', fail_times=3)
FlakyModel.objects.create(id=2, name='doomed', always_fail=True)
print(json.dumps(FlakyModel.objects.count()))
"""


def attempts(replica) -> dict:
    return {
        row['id']: row['attempts']
        for row in replica.query('SELECT id, attempts FROM dj_replica_flakyattempt')
    }


def applied(replica) -> dict:
    return replica.rows('dj_replica_flakyreplica', 'id, name, cqrs_revision')


def test_dead_letters_are_retried_into_the_replica(core, broker):
    master = core('master')
    queue = broker.queue('flaky')
    dead_letters = f'dead_letter_{queue}'
    replica = core('replica', queue, CQRS_TEST_MAX_RETRIES=1, CQRS_TEST_RETRY_DELAY=1)
    replica.start_consumer('--cqrs-id', 'flaky', workers=1)

    assert master.shell(CREATE) == 2

    # both messages fail twice (first try + one retry), then go to the dead-letter queue
    wait_for(
        lambda: attempts(replica) == {1: 2, 2: 2},
        message=lambda: f'two failed attempts per row: {attempts(replica)}\n{replica.log_tail()}',
    )
    wait_for(
        lambda: broker.queue_state(dead_letters)[0] == 2,
        message=lambda: f'2 dead letters: {broker.queue_state(dead_letters)}',
    )
    assert applied(replica) == {}
    assert replica.stop_consumer() == 0

    dumped = [
        json.loads(line)
        for line in replica.manage('cqrs_dead_letters', 'dump').stdout.splitlines()
        if line.strip()
    ]
    assert sorted(str(message['instance_pk']) for message in dumped) == ['1', '2']
    assert {message['cqrs_id'] for message in dumped} == {'flaky'}
    assert broker.queue_state(dead_letters)[0] == 2  # dump leaves them there

    # retry: back to the replica's queue (nobody consumes it now), with retries = 0
    replica.manage('cqrs_dead_letters', 'retry')
    assert broker.queue_state(dead_letters)[0] == 0
    assert broker.queue_state(queue)[0] == 2
    assert applied(replica) == {}

    # the consumer tries again: row 1 succeeds on its 4th attempt (fail_times=3), row 2 fails
    # twice more and is a dead letter again
    replica.start_consumer('--cqrs-id', 'flaky', workers=1)
    wait_for(
        lambda: 1 in applied(replica),
        message=lambda: (
            f'the retried row in the replica: {attempts(replica)}\n{replica.log_tail()}'
        ),
    )
    assert applied(replica) == {1: {'id': 1, 'name': 'recovers', 'cqrs_revision': 0}}
    wait_for(
        lambda: attempts(replica).get(2) == 4 and broker.queue_state(dead_letters)[0] == 1,
        message=lambda: f'row 2 dead-lettered again: {attempts(replica)}',
    )
    assert attempts(replica)[1] == 4
    assert 2 not in applied(replica)
    assert replica.stop_consumer() == 0
