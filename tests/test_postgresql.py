"""PostgreSQL behaviour: row locks, concurrent outbox relays, per-message statement timeouts.

Run with ``--ds=tests.settings_pg`` (every test here is skipped on SQLite).
"""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import OperationalError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from dj_cqrs import outbox
from dj_cqrs.constants import SignalType
from dj_cqrs.controller.consumer import consume
from dj_cqrs.models import CQRSOutboxMessage
from dj_cqrs.transport.loopback import LoopbackTransport
from tests.dj_master.models import SimplestModel
from tests.dj_replica.models import LockedReplica, SimplestReplica
from tests.harness import instance_data, override_cqrs, payload

pytestmark = pytest.mark.postgresql_only

TIMEOUT_LOGGER = 'cqrs.timeouts'


def save_payload(cqrs_id, pk, rev=0, **fields):
    return payload(SignalType.SAVE, cqrs_id, instance_data(pk, rev, **fields))


def in_thread(func, *args):
    """Run ``func`` in another thread (so on another database connection); return its result."""

    def run():
        try:
            return func(*args)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as executor:
        return executor.submit(run).result(timeout=60)


def try_lock_nowait(table, pk):
    """``SELECT … FOR UPDATE NOWAIT`` of one row: the rows, or the OperationalError raised."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f'SELECT id FROM {table} WHERE id = %s FOR UPDATE NOWAIT', [pk])
            return cursor.fetchall()
    except OperationalError as exc:
        return exc


# --- CQRS_SELECT_FOR_UPDATE -------------------------------------------------------------------


@pytest.mark.django_db
def test_select_for_update_lookup_emits_for_update():
    table = LockedReplica._meta.db_table

    with CaptureQueriesContext(connection) as created:
        assert consume(save_payload('locked', 1, 0, name='first'))
    with CaptureQueriesContext(connection) as updated:
        assert consume(save_payload('locked', 1, 1, name='second'))

    for captured in (created, updated):
        lookups = [q['sql'] for q in captured.captured_queries if q['sql'].startswith('SELECT')]
        lookups = [sql for sql in lookups if table in sql]
        assert lookups, captured.captured_queries
        assert all('FOR UPDATE' in sql for sql in lookups), lookups
    assert LockedReplica.objects.get(pk=1).name == 'second'


@pytest.mark.django_db
def test_replica_without_select_for_update_does_not_lock_in_sql():
    with CaptureQueriesContext(connection) as captured:
        assert consume(save_payload('simplest', 1, 0, name='first'))
    assert not any('FOR UPDATE' in q['sql'] for q in captured.captured_queries)


@pytest.mark.django_db(transaction=True)
def test_select_for_update_really_locks_the_row_until_the_transaction_ends():
    locked_table = LockedReplica._meta.db_table
    plain_table = SimplestReplica._meta.db_table
    assert consume(save_payload('locked', 1, 0, name='stored'))
    assert consume(save_payload('simplest', 1, 0, name='stored'))

    # A duplicate message changes nothing: only the lookup can hold a lock on the row.
    with transaction.atomic():
        assert consume(save_payload('locked', 1, 0, name='stored'))
        blocked = in_thread(try_lock_nowait, locked_table, 1)
    assert isinstance(blocked, OperationalError), blocked
    assert 'lock' in str(blocked)
    assert in_thread(try_lock_nowait, locked_table, 1) == [(1,)]

    with transaction.atomic():
        assert consume(save_payload('simplest', 1, 0, name='stored'))
        free = in_thread(try_lock_nowait, plain_table, 1)
    assert free == [(1,)]


# --- concurrent outbox relays -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_relays_publish_every_row_exactly_once(monkeypatch):
    total_rows = 300
    with override_cqrs(master={'outbox': True}):
        outbox.flush_published()
        monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(lambda payload: False))
        SimplestModel.cqrs.bulk_create(
            [SimplestModel(id=pk, name=f'row {pk}') for pk in range(1, total_rows + 1)]
        )
        assert CQRSOutboxMessage.objects.count() == total_rows

        sent = []
        sent_lock = threading.Lock()
        # The first message of each relay waits for the other relay: both hold a locked batch
        # at the same moment, which only SKIP LOCKED allows (FOR UPDATE alone would block the
        # second relay on the first batch, and the barrier would break).
        barrier = threading.Barrier(2, timeout=30)
        local = threading.local()

        def record(payload):
            if not getattr(local, 'met', False):
                local.met = True
                barrier.wait()
            with sent_lock:
                sent.append((payload.cqrs_id, payload.pk))
            return True

        monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(record))

        def relay_until_empty():
            relayed = 0
            try:
                while True:
                    count = outbox.relay_batch('default', batch_size=50, min_age=0)
                    if not count:
                        return relayed
                    relayed += count
            finally:
                connections.close_all()

        with ThreadPoolExecutor(2) as executor:
            futures = [executor.submit(relay_until_empty) for _ in range(2)]
            counts = [future.result(timeout=120) for future in futures]

    assert len(sent) == len(set(sent)), 'a row was published twice'
    assert sorted(sent) == [('simplest', pk) for pk in range(1, total_rows + 1)]
    assert sum(counts) == total_rows
    assert all(counts), counts
    assert CQRSOutboxMessage.objects.count() == 0


# --- CQRS_QUERY_TIMEOUT -----------------------------------------------------------------------


def timeout_conf():
    return override_cqrs(
        replica={
            'CQRS_QUERY_TIMEOUT': 200,
            'CQRS_LOG_TIMED_OUT_QUERIES': True,
            'CQRS_QUERY_LOGGER': TIMEOUT_LOGGER,
        }
    )


def sleep_if_slow(data):
    """Run ``pg_sleep(2)`` for messages named 'slow'; return the statement timeout in force."""
    with connection.cursor() as cursor:
        if data.get('name') == 'slow':
            cursor.execute('SELECT pg_sleep(2)')
        cursor.execute('SHOW statement_timeout')
        return cursor.fetchone()[0]


def statement_timeout():
    with connection.cursor() as cursor:
        cursor.execute('SHOW statement_timeout')
        return cursor.fetchone()[0]


def timed_out_logs(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == TIMEOUT_LOGGER and 'Timed out query' in r.getMessage()
    ]


@pytest.mark.django_db(transaction=True)
def test_query_timeout_cuts_a_slow_replica_hook_and_logs_the_query(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    seen_timeouts = []

    def cqrs_save(cls, master_data, previous_data=None, sync=False, meta=None):
        seen_timeouts.append(sleep_if_slow(master_data))
        return cls.cqrs.save_instance(master_data, previous_data, sync, meta)

    monkeypatch.setattr(SimplestReplica, 'cqrs_save', classmethod(cqrs_save))

    with timeout_conf():
        # Item 17: the database error is logged and the message fails (None), not raised.
        assert consume(save_payload('simplest', 1, 0, name='slow')) is None
        assert 'canceling statement due to statement timeout\nCQRS SAVE error: pk = 1, ' in (
            caplog.text
        )
        assert not SimplestReplica.objects.filter(pk=1).exists()

        [logged] = timed_out_logs(caplog)
        assert 'pg_sleep' in logged

        # The next message applies on the same connection, with the timeout again in force
        # for that message only.
        assert consume(save_payload('simplest', 2, 0, name='fast'))
        assert seen_timeouts == ['200ms']
        assert SimplestReplica.objects.get(pk=2).name == 'fast'
        assert statement_timeout() == '0'

    assert len(timed_out_logs(caplog)) == 1


@pytest.mark.django_db(transaction=True)
def test_query_timeout_is_scoped_to_one_message(monkeypatch):
    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        sleep_if_slow(mapped_data)
        return cls._default_manager.create(**mapped_data)

    monkeypatch.setattr(SimplestReplica, 'cqrs_create', classmethod(cqrs_create))

    with timeout_conf():
        assert consume(save_payload('simplest', 1, 0, name='fast'))
        assert statement_timeout() == '0'
        # Outside a message, a statement longer than the timeout runs to its end.
        with connection.cursor() as cursor:
            cursor.execute('SELECT pg_sleep(0.4), 1')
            assert cursor.fetchone()[1] == 1


@pytest.mark.django_db(transaction=True)
def test_query_timeout_in_cqrs_create_fails_the_message_and_logs_the_query(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)

    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        sleep_if_slow(mapped_data)
        return cls._default_manager.create(**mapped_data)

    monkeypatch.setattr(SimplestReplica, 'cqrs_create', classmethod(cqrs_create))

    with timeout_conf():
        try:
            result = consume(save_payload('simplest', 1, 0, name='slow'))
        except OperationalError as exc:
            result = exc
        # Failed: falsy or raised.
        assert not result or isinstance(result, OperationalError)
        assert not SimplestReplica.objects.filter(pk=1).exists()
        assert 'statement timeout' in caplog.text

        # The next message applies fine.
        assert consume(save_payload('simplest', 2, 0, name='fast'))
        assert SimplestReplica.objects.get(pk=2).name == 'fast'

    # CQRS_LOG_TIMED_OUT_QUERIES: the query cut in cqrs_create (the usual hook to override)
    # is logged on CQRS_QUERY_LOGGER.
    logged = timed_out_logs(caplog)
    assert len(logged) == 1, caplog.text
    assert 'pg_sleep' in logged[0]


@pytest.mark.django_db(transaction=True)
def test_timed_out_queries_are_not_logged_when_not_asked(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)

    def cqrs_save(cls, master_data, previous_data=None, sync=False, meta=None):
        sleep_if_slow(master_data)
        return cls.cqrs.save_instance(master_data, previous_data, sync, meta)

    monkeypatch.setattr(SimplestReplica, 'cqrs_save', classmethod(cqrs_save))

    with override_cqrs(replica={'CQRS_QUERY_TIMEOUT': 200}):
        assert consume(save_payload('simplest', 1, 0, name='slow')) is None

    assert 'Timed out query' not in caplog.text
