"""Issue 12, item 1: the replica's progress tables, ``dj_cqrs.status`` and ``cqrs_status``
(database level; the broker figures are in tests/transport/test_status_broker.py). Runs on
SQLite and, with ``--ds=tests.settings_pg``, on PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from types import SimpleNamespace

import pytest
import ujson
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dj_cqrs import replica_status, status
from dj_cqrs.constants import SignalType
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.management.commands import cqrs_status
from dj_cqrs.models import CQRSLagSample, CQRSOutboxMessage, CQRSReplicaStatus
from dj_cqrs.transport._consuming import Delivery
from dj_cqrs.transport._queues import BrokerUnreachable, QueueFigures
from tests.dj_replica.models import SimplestReplica
from tests.harness import call_exiting, recording_worker

NOW = datetime(2026, 3, 1, 12, 30, 40, tzinfo=dt_timezone.utc)


def at(seconds_before_now: float) -> datetime:
    return NOW - timedelta(seconds=seconds_before_now)


def message(pk, signal_type=SignalType.SAVE, cqrs_id='simplest', updated=None):
    data = {'id': pk, 'name': f'n{pk}', 'cqrs_revision': 0}
    if updated is not None:
        data['cqrs_updated'] = str(updated)
    return TransportPayload(signal_type, cqrs_id, data, pk)


def status_rows():
    """``{cqrs_id: (last_applied, last_master_updated)}`` of the replica status table."""
    return {
        row.cqrs_id: (row.last_applied, row.last_master_updated)
        for row in CQRSReplicaStatus.objects.all()
    }


def samples():
    return sorted(CQRSLagSample.objects.values_list('cqrs_id', 'minute', 'max_lag'))


def status_writes(queries):
    return [
        q['sql']
        for q in queries
        if 'dj_cqrs_replica_status' in q['sql'] or 'dj_cqrs_lag_sample' in q['sql']
    ]


# --- the tables the consumer writes ------------------------------------------------------------


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_record_upserts_last_applied_and_the_minute_lag_in_one_statement():
    progress = replica_status.summarize(
        [message(1, updated=at(30)), message(2, updated=at(5)), message(3, cqrs_id='author')], NOW
    )
    with CaptureQueriesContext(connection) as queries:
        replica_status.record('default', progress, now=NOW)

    writes = [q for q in status_writes(queries) if q.startswith(('INSERT', 'WITH'))]
    assert len(writes) == (1 if connection.vendor == 'postgresql' else 2)
    assert status_rows() == {'simplest': (NOW, at(5)), 'author': (NOW, None)}
    minute = NOW.replace(second=0)
    # The largest lag of the batch: its oldest change; 'author' had no cqrs_updated.
    assert samples() == [('simplest', minute, 30.0)]


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_record_never_moves_back_and_keeps_the_minute_maximum():
    replica_status.record(
        'default', replica_status.summarize([message(1, updated=at(50))], NOW), NOW
    )
    later = NOW + timedelta(seconds=10)
    # A worker that commits later but applied older changes (another worker's batch).
    replica_status.record(
        'default', replica_status.summarize([message(2, updated=at(90))], NOW), NOW
    )
    replica_status.record(
        'default', replica_status.summarize([message(3, updated=at(70))], later), later
    )

    assert status_rows() == {'simplest': (later, at(50))}
    assert samples() == [('simplest', NOW.replace(second=0), 90.0)]

    next_minute = NOW + timedelta(minutes=1)
    replica_status.record(
        'default', replica_status.summarize([message(4, updated=at(1))], next_minute), next_minute
    )
    assert samples()[-1] == ('simplest', next_minute.replace(second=0), 61.0)


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_other_databases_upsert_through_the_orm_with_the_same_result(monkeypatch):
    monkeypatch.setattr(connection, 'vendor', 'mysql')
    replica_status.record(
        'default', replica_status.summarize([message(1, updated=at(50))], NOW), NOW
    )
    replica_status.record(
        'default', replica_status.summarize([message(2, updated=at(90))], NOW), NOW
    )
    later = NOW + timedelta(seconds=10)
    replica_status.record(
        'default', replica_status.summarize([message(3, updated=at(70))], later), later
    )

    assert status_rows() == {'simplest': (later, at(50))}
    assert samples() == [('simplest', NOW.replace(second=0), 90.0)]


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_syncs_count_as_applied_but_not_in_the_lag():
    old = at(86400 * 30)
    progress = replica_status.summarize([message(1, SignalType.SYNC, updated=old)], NOW)
    replica_status.record('default', progress, NOW)

    assert status_rows() == {'simplest': (NOW, None)}
    assert samples() == []


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_deletes_and_odd_cqrs_updated_values():
    progress = replica_status.summarize(
        [
            message(1, SignalType.DELETE, updated='2026-03-01T12:30:00+00:00'),
            message(2, updated='not a date'),
            TransportPayload(SignalType.SAVE, 'simplest', None, 3),
        ],
        NOW,
    )
    assert progress == {'simplest': replica_status.Progress(NOW, at(40), 40.0)}


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_purge_keeps_two_hours_of_samples():
    for minutes in (0, 119, 121):
        CQRSLagSample.objects.create(
            cqrs_id='simplest', minute=NOW - timedelta(minutes=minutes), max_lag=1.0
        )
    assert replica_status.purge('default', now=NOW) == 1
    assert len(samples()) == 2


def delivery(pk, updated, cqrs_id='simplest', tag=None):
    body = message(pk, cqrs_id=cqrs_id, updated=updated).to_dict()
    return Delivery(ujson.dumps(body), cqrs_id, tag or f'tag-{pk}')


def status_upserts(queries):
    return [
        i
        for i, q in enumerate(queries)
        if q['sql'].startswith(('INSERT', 'WITH')) and 'dj_cqrs_replica_status' in q['sql']
    ]


@pytest.mark.django_db(transaction=True)
def test_item_01_worker_writes_the_status_at_most_once_per_batch_after_the_commit():
    consumer, calls = recording_worker()
    now = timezone.now()
    batch = [delivery(pk, now - timedelta(seconds=pk)) for pk in range(1, 41)]
    batch.append(delivery(41, now - timedelta(seconds=3), cqrs_id='no_db'))
    with CaptureQueriesContext(connection) as queries:
        consumer.handle_batch(batch)

    assert len(calls.acked) == 41
    writes = status_upserts(queries.captured_queries)
    assert len(writes) == 1  # one upsert for the 41 messages and both CQRS_IDs
    sqls = [q['sql'] for q in queries.captured_queries]
    assert writes[0] > max(i for i, sql in enumerate(sqls) if 'simplestreplica' in sql)
    if connection.vendor == 'postgresql':  # a commit that does not wait for the disk
        assert sqls[writes[0] - 1] == 'SET LOCAL synchronous_commit TO OFF'
    assert set(status_rows()) == {'simplest', 'no_db'}
    newest = status_rows()['simplest'][1]
    assert newest.replace(microsecond=0) == (now - timedelta(seconds=1)).replace(microsecond=0)
    ((_id, _minute, lag),) = [s for s in samples() if s[0] == 'simplest']
    assert 40 <= lag < 60

    # The batches of the next WRITE_INTERVAL are written together, by ``run`` when it is due.
    later = timezone.now()
    with CaptureQueriesContext(connection) as queries:
        consumer.handle_batch([delivery(pk, later) for pk in range(50, 60)])
        consumer.handle_batch([delivery(pk, later + timedelta(seconds=1)) for pk in range(60, 70)])
    assert status_upserts(queries.captured_queries) == []
    with CaptureQueriesContext(connection) as queries:
        consumer.write_progress()
    assert len(status_upserts(queries.captured_queries)) == 1
    assert status_rows()['simplest'][1] == later + timedelta(seconds=1)
    assert calls.rejected == []


@pytest.mark.django_db(transaction=True)
def test_item_01_run_writes_what_is_pending_when_due_and_at_stop(monkeypatch):
    consumer, calls = recording_worker()
    written = []
    monkeypatch.setattr(replica_status, 'record', lambda using, progress: written.append(progress))
    polls = iter(
        [
            [delivery(1, timezone.now())],  # written at once: no write yet
            [delivery(2, timezone.now())],  # kept: the last write is recent
            [],
        ]
    )

    class Stop:
        count = 0

        def is_set(self):
            self.count += 1
            return self.count > 3

    def poll(timeout):
        consumer.inbox.extend(next(polls, []))

    consumer.run(Stop(), poll)

    assert [list(progress) for progress in written] == [['simplest'], ['simplest']]
    assert calls.rejected == []


@pytest.mark.django_db(transaction=True)
def test_item_01_a_failed_status_write_is_logged_once_and_never_raised(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise DatabaseError('no such table: dj_cqrs_replica_status')

    monkeypatch.setattr(replica_status, 'record', broken)
    consumer, calls = recording_worker()
    consumer.handle_batch([delivery(1, timezone.now()), delivery(2, timezone.now())])
    consumer.handle_batch([delivery(3, timezone.now())])
    consumer.write_progress()

    assert (calls.acked, calls.rejected) == (['tag-1', 'tag-2', 'tag-3'], [])
    assert SimplestReplica.objects.count() == 3
    errors = [r.getMessage() for r in caplog.records if 'status could not' in r.getMessage()]
    assert errors == [
        'CQRS replica status could not be written: no such table: dj_cqrs_replica_status'
    ]


# --- dj_cqrs.status ----------------------------------------------------------------------------


@pytest.fixture
def queue_figures(monkeypatch):
    """The broker figures ``collect`` gets: replica queue, dead letters (a test may change)."""
    figures = {'replica': (4, 1, 2), 'dead_letter_replica': (3, 0, 0)}

    def inspect(transport, names):
        if figures.get('down'):
            raise BrokerUnreachable('localhost:1//', 'ConnectionRefusedError: refused')
        return 'localhost:5672//', [QueueFigures(n, *figures[n]) for n in names]

    monkeypatch.setattr(status, 'inspect', inspect)
    return figures


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_collect_replica_models_lag_and_queues(queue_figures, monkeypatch):
    monkeypatch.setattr(timezone, 'now', lambda: NOW)
    CQRSReplicaStatus.objects.create(
        cqrs_id='simplest', last_applied=at(2), last_master_updated=at(12)
    )
    CQRSReplicaStatus.objects.create(cqrs_id='author', last_applied=at(1), last_master_updated=None)

    result = status.collect('replica')

    assert result.side == 'replica'
    assert (result.broker, result.broker_reachable, result.broker_error) == (
        'localhost:5672//',
        True,
        None,
    )
    assert result.queues == [
        status.QueueStatus('replica', 4, 1, 2),
        status.QueueStatus('dead_letter_replica', 3, 0, 0),
    ]
    assert result.dead_letters == 3
    by_id = {m.cqrs_id: m for m in result.models}
    assert by_id['simplest'] == status.ReplicaModelStatus('simplest', at(2), at(12), 12.0)
    assert by_id['author'] == status.ReplicaModelStatus('author', at(1), None, None)
    assert by_id['tree'] == status.ReplicaModelStatus('tree', None, None, None)
    assert result.outbox == []


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_collect_master_outbox_backlog(queue_figures, monkeypatch):
    monkeypatch.setattr(timezone, 'now', lambda: NOW)
    for seconds in (30, 5):
        row = CQRSOutboxMessage.objects.create(cqrs_id='basic', instance_pk='1', signal_type='SAVE')
        CQRSOutboxMessage.objects.filter(pk=row.pk).update(created=at(seconds))

    result = status.collect('master')

    assert result.queues == [] and result.models == [] and result.dead_letters is None
    assert result.broker_reachable
    assert status.OutboxStatus('default', 2, 30.0) in result.outbox


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_as_dict_is_the_json_document(queue_figures, monkeypatch):
    monkeypatch.setattr(timezone, 'now', lambda: NOW)
    CQRSReplicaStatus.objects.create(
        cqrs_id='simplest', last_applied=at(2), last_master_updated=at(12)
    )
    queue_figures['down'] = True

    document = status.collect('both').as_dict()

    assert json.loads(json.dumps(document)) == document
    assert set(document) == {
        'side', 'broker', 'broker_reachable', 'broker_error', 'queues', 'dead_letters',
        'models', 'outbox', 'database_error', 'collected_at',
    }  # fmt: skip
    assert document['broker_error'] == 'ConnectionRefusedError: refused'
    assert document['queues'][0] == {
        'name': 'replica', 'ready': None, 'unacknowledged': None, 'consumers': None
    }  # fmt: skip
    assert document['dead_letters'] is None
    simplest = next(m for m in document['models'] if m['cqrs_id'] == 'simplest')
    assert simplest == {
        'cqrs_id': 'simplest',
        'last_applied': '2026-03-01T12:30:38+00:00',
        'last_master_updated': '2026-03-01T12:30:28+00:00',
        'lag': 12.0,
    }


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_lag_history_per_cqrs_id_oldest_first(monkeypatch):
    now = timezone.now()
    for minutes, lag in ((90, 9.0), (30, 3.0), (1, 1.0)):
        CQRSLagSample.objects.create(
            cqrs_id='simplest', minute=now - timedelta(minutes=minutes), max_lag=lag
        )
    CQRSLagSample.objects.create(cqrs_id='author', minute=now, max_lag=0.5)

    history = status.lag_history()

    assert {k: [lag for _m, lag in v] for k, v in history.items()} == {
        'simplest': [3.0, 1.0],
        'author': [0.5],
    }
    assert len(status.lag_history(timedelta(hours=2))['simplest']) == 3


# --- the command --------------------------------------------------------------------------------


@pytest.fixture
def lagging(queue_figures, monkeypatch):
    """simplest applied 12 s ago; 4 ready + 1 unacked in the queue, 3 dead letters; an outbox
    row 30 s old."""
    monkeypatch.setattr(timezone, 'now', lambda: NOW)
    CQRSReplicaStatus.objects.create(
        cqrs_id='simplest', last_applied=at(2), last_master_updated=at(12)
    )
    row = CQRSOutboxMessage.objects.create(cqrs_id='basic', instance_pk='1', signal_type='SAVE')
    CQRSOutboxMessage.objects.filter(pk=row.pk).update(created=at(30))
    return queue_figures


@pytest.mark.django_db(databases=['default', 'other'])
@pytest.mark.parametrize(
    'args, code, line',
    [
        ([], 0, None),
        (['--max-lag', '12', '--max-ready', '4', '--max-dead-letters', '3'], 0, None),
        (['--max-outbox-age', '31'], 0, None),
        (['--max-lag', '11.5'], 1,
         'lag of simplest is 12.0 s with 5 message(s) waiting, over --max-lag 11.5'),
        (['--max-ready', '3'], 1, '4 ready message(s) in replica, over --max-ready 3'),
        (['--max-dead-letters', '2'], 1, '3 dead letter(s), over --max-dead-letters 2'),
        (['--max-outbox-age', '29'], 1,
         'oldest outbox row of database default is 30.0 s old, over --max-outbox-age 29'),
    ],
)  # fmt: skip
def test_item_01_thresholds_exit_status_and_the_line_naming_it(lagging, args, code, line):
    exit_code, out, err = call_exiting('cqrs_status', *args)

    assert exit_code == code
    assert err.splitlines() == ([f'CQRS status: {line}'] if line else [])
    assert 'replica' in out and 'simplest' in out


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_a_caught_up_replica_is_not_lagging(lagging):
    lagging['replica'] = (0, 0, 1)
    assert call_exiting('cqrs_status', '--max-lag', '1')[0] == 0
    lagging['replica'] = (0, 2, 1)  # held by a worker (in flight or delayed for a retry)
    assert call_exiting('cqrs_status', '--max-lag', '1')[0] == 1


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_broker_down_exits_2_with_a_one_line_reason(lagging):
    lagging['down'] = True
    code, out, err = call_exiting('cqrs_status', '--max-ready', '0')

    assert code == 2
    assert err == 'CQRS status: broker localhost:1// unreachable: ConnectionRefusedError: refused\n'
    assert 'UNREACHABLE' in out and 'unknown' in out


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_database_down_exits_2_with_a_one_line_reason(queue_figures, monkeypatch):
    def unreachable(*args, **kwargs):
        raise DatabaseError('connection to server at "db" failed\nIs the server running?')

    class Unreachable:
        _default_manager = SimpleNamespace(using=unreachable)

    monkeypatch.setattr(status, 'CQRSReplicaStatus', Unreachable)
    code, _out, err = call_exiting('cqrs_status', '--max-lag', '1')

    assert code == 2
    assert err == 'CQRS status: database default: connection to server at "db" failed\n'


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_json_output(lagging):
    code, out, err = call_exiting('cqrs_status', '--json', '--max-ready', '3')

    document = json.loads(out)
    assert code == 1
    assert document['problems'] == ['4 ready message(s) in replica, over --max-ready 3']
    assert document['side'] == 'both'
    assert document['queues'][0] == {
        'name': 'replica', 'ready': 4, 'unacknowledged': 1, 'consumers': 2
    }  # fmt: skip
    assert document['outbox'] == [{'database': 'default', 'rows': 1, 'oldest_age': 30.0}] or (
        {'database': 'default', 'rows': 1, 'oldest_age': 30.0} in document['outbox']
    )


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_01_table_output(lagging):
    lagging['replica'] = (4, None, None)
    out = call_exiting('cqrs_status')[1]

    assert out.splitlines()[:5] == [
        'CQRS status (both), broker localhost:5672//: reachable',
        '',
        'Queue                Ready  Unacked  Consumers',
        'replica                  4  unknown    unknown',
        'dead_letter_replica      3        0          0',
    ]
    assert 'Dead letters: 3' in out
    line = next(line for line in out.splitlines() if line.startswith('simplest '))
    assert line.split() == [
        'simplest',
        '2026-03-01T12:30:38+00:00',
        '2026-03-01T12:30:28+00:00',
        '12.0',
    ]


def test_item_01_render_is_a_pure_function_of_the_status():
    result = status.Status('master', 'h:1//', True, None, [], None, [], [])
    result.outbox = [status.OutboxStatus('default', 0, None)]
    assert cqrs_status.render(result).splitlines() == [
        'CQRS status (master), broker h:1//: reachable',
        '',
        'Outbox database  Rows  Oldest (s)',
        'default             0           -',
    ]
