"""Duplicate, out-of-order and concurrent deliveries through a running ``cqrs_consume``
(issue 14, item 1 f-g).

Messages are hand-published with pika to the replica queue of a consumer that is already
running (``wait_ready``), so the order they arrive in is the order they were published in;
the concurrent case starts both workers before publishing, so that the broker hands the
messages out to both of them in turn.
"""

from __future__ import annotations

import re

import psycopg

from tests.harness import PG_SERVER, wait_equal, wait_for, wire_body

UPDATED = '2024-01-01 00:00:00+00:00'
REGRESSIONS_TRIGGER = """
CREATE TABLE revision_regressions (old integer, new integer);
CREATE FUNCTION record_regression() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.cqrs_revision < OLD.cqrs_revision THEN
        INSERT INTO revision_regressions VALUES (OLD.cqrs_revision, NEW.cqrs_revision);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER record_regression BEFORE UPDATE ON TABLE_NAME
    FOR EACH ROW EXECUTE FUNCTION record_regression();
"""


def publish_save(broker, cqrs_id: str, pk: int, revision: int, name: str) -> None:
    data = {'id': pk, 'name': name, 'cqrs_revision': revision, 'cqrs_updated': UPDATED}
    broker.publish(wire_body(pk, cqrs_id=cqrs_id, instance_data=data), cqrs_id)


# --- f. revision 2, then 1, then 2 again -------------------------------------------------------


def test_item_01f_old_and_duplicate_revisions_leave_revision_2(names, broker, replica_service):
    replica = replica_service().start('-w', '1')
    replica.wait_ready()

    publish_save(broker, 'simplest', 7, 2, 'revision 2')
    publish_save(broker, 'simplest', 7, 1, 'revision 1, late')
    publish_save(broker, 'simplest', 7, 2, 'revision 2, again')
    wait_for(
        lambda: replica.log().count('CQRS is applied: pk = 7 (simplest)') == 3,
        message='the three messages handled',
    )
    assert replica.stop() == 0

    assert replica.query('SELECT id, name, cqrs_revision FROM dj_replica_simplestreplica') == [
        (7, 'revision 2', 2)
    ]
    log = replica.log()
    wrong_order = re.findall(r'Wrong CQRS sync order: .*', log)
    duplicate = re.findall(r'Received duplicate CQRS data: .*', log)
    assert wrong_order == [
        'Wrong CQRS sync order: pk = 7, cqrs_revision = new 1 / existing 2 (simplest).'
    ]
    assert duplicate == ['Received duplicate CQRS data: pk = 7, cqrs_revision = 2 (simplest).']
    # Both are handled (acknowledged), neither retried nor dead-lettered.
    assert 'CQRS is failed' not in log
    assert broker.count(names['queue']) == 0
    assert broker.count(names['dead_letter_queue']) == 0


# --- g. two workers, rapid updates of one pk, PostgreSQL replica ----------------------------


def test_item_01g_two_workers_on_postgresql_keep_the_last_revision(names, broker, replica_service):
    # 'locked' replicas read the row with select_for_update (CQRS_SELECT_FOR_UPDATE = True),
    # the documented way to make concurrent workers safe; without it the race is allowed.
    replica = replica_service(vendor='postgresql', CQRS_TEST_DELAY_QUEUE=1)
    table = 'dj_replica_lockedreplica'
    # Any UPDATE that takes the row's revision backwards is recorded, even if a later one
    # puts it forward again: a lost update in the middle of the stream shows.
    with psycopg.connect(dbname=replica.database.name, autocommit=True, **PG_SERVER) as connection:
        connection.execute(REGRESSIONS_TRIGGER.replace('TABLE_NAME', table))
    replica.start('-w', '2')
    replica.wait_ready(workers=2)

    # The master's 300 revisions of row 1, published as fast as possible; with a prefetch
    # of 2 the broker gives them to the two workers in turn.
    revisions = 300
    for revision in range(revisions):
        publish_save(broker, 'locked', 1, revision, f'revision {revision}')
    last = [(1, f'revision {revisions - 1}', revisions - 1)]

    wait_equal(lambda: last, lambda: replica.query(f'SELECT id, name, cqrs_revision FROM {table}'))
    wait_for(
        lambda: replica.log().count('CQRS is applied: pk = 1 (locked)') == revisions,
        message=f'{revisions} messages handled',
    )
    assert replica.stop() == 0
    assert replica.query(f'SELECT id, name, cqrs_revision FROM {table}') == last

    log = replica.log()
    workers = set(re.findall(r' (\d+) INFO CQRS is applied: pk = 1 \(locked\)', log))
    print(
        f'{len(workers)} workers; {log.count("Wrong CQRS sync order")} older revisions skipped, '
        f'{log.count("CQRS is failed")} failed attempts retried'
    )
    assert len(workers) == 2, 'both workers applied messages of the row'
    assert replica.query('SELECT old, new FROM revision_regressions') == []
    assert log.count('CQRS is applied: pk = 1 (locked)') == revisions
    assert 'CQRS is added to dead letter queue' not in log
    assert broker.count(names['queue']) == 0
    assert broker.count(names['dead_letter_queue']) == 0
