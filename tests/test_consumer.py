"""Consumer controller: ``dj_cqrs.controller.consumer.consume`` and its safety nets."""

import logging

import pytest
from django.db import OperationalError, connection, connections, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from dj_cqrs import logger as cqrs_logger
from dj_cqrs.constants import SignalType
from dj_cqrs.controller.consumer import consume
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.transport.loopback import LoopbackTransport
from tests.dj_replica.models import MetaReplica, NoDBReplica, RawReplica, SimplestReplica
from tests.harness import PAYLOAD_UPDATED as UPDATED
from tests.harness import cqrs_settings, logged, override_cqrs, payload
from tests.harness import instance_data as data


def save_payload(cqrs_id='simplest', instance_data=None, **kwargs):
    """A SAVE of ``cqrs_id``, by default of row 1 named 'a'."""
    if instance_data is None:
        instance_data = data(1, 0, name='a')
    return payload(SignalType.SAVE, cqrs_id, instance_data, **kwargs)


@pytest.fixture(autouse=True)
def _drop_query_capturers():
    """The timed-out query capturer is installed on the shared connection: remove it after."""
    yield
    connection.execute_wrappers[:] = [
        w for w in connection.execute_wrappers if not isinstance(w, cqrs_logger.LastQueryCapturer)
    ]


def _raise_from_save(monkeypatch, exc, write_first=False):
    original = SimplestReplica.cqrs_save.__func__

    def failing_save(cls, master_data, previous_data=None, sync=False, meta=None):
        if write_first:
            original(cls, master_data, previous_data=previous_data, sync=sync)
        raise exc

    monkeypatch.setattr(SimplestReplica, 'cqrs_save', classmethod(failing_save))


# --- routing and input checks -----------------------------------------------------------------


@pytest.mark.django_db
def test_consume_returns_hook_result():
    result = consume(save_payload(instance_data=data(1, 0, name='routed')))

    assert isinstance(result, SimplestReplica)
    assert result.pk == 1
    assert SimplestReplica.objects.get(id=1).name == 'routed'


@pytest.mark.django_db
def test_bad_signal_type(cqrs_logs):
    result = consume(payload('UPDATE', 'simplest', data(1, 0, name='a')))

    assert not result
    assert not SimplestReplica.objects.exists()
    assert any('UPDATE' in m for m in logged(cqrs_logs, 'ERROR'))


@pytest.mark.django_db
def test_unknown_cqrs_id(cqrs_logs):
    result = consume(payload(SignalType.SAVE, 'no_such_model', data(1, 0, name='a')))

    assert not result
    assert any('no_such_model' in m for m in logged(cqrs_logs, 'ERROR'))


@pytest.mark.django_db
@pytest.mark.parametrize('instance_data', [None, [1, 2], 'text', 5])
def test_instance_data_not_a_dict(cqrs_logs, instance_data):
    result = consume(payload(SignalType.SAVE, 'simplest', instance_data, pk=1))

    assert not result
    assert not SimplestReplica.objects.exists()
    assert any('simplest' in m for m in logged(cqrs_logs, 'ERROR'))


@pytest.mark.django_db
def test_instance_data_not_a_dict_on_delete(cqrs_logs):
    SimplestReplica.objects.create(id=1, name='a', cqrs_revision=0, cqrs_updated=UPDATED)

    assert not consume(payload(SignalType.DELETE, 'simplest', [1], pk=1))

    assert SimplestReplica.objects.filter(id=1).exists()
    assert logged(cqrs_logs, 'ERROR')


# --- hook exceptions and transactions ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_hook_exception_is_reraised_for_the_transport(cqrs_logs, monkeypatch):
    """Not a database error: raised as is (the transport logs it and retries the message)."""
    _raise_from_save(monkeypatch, RuntimeError('hook exploded'))

    with pytest.raises(RuntimeError, match='hook exploded'):
        consume(save_payload(instance_data=data(1, 0, name='a')))


@pytest.mark.django_db(transaction=True)
def test_hook_exception_rolls_back_its_writes(monkeypatch):
    assert consume(save_payload(instance_data=data(1, 0, name='kept')))
    _raise_from_save(monkeypatch, RuntimeError('after write'), write_first=True)

    with pytest.raises(RuntimeError):
        consume(save_payload(instance_data=data(2, 0, name='rolled back')))

    assert list(SimplestReplica.objects.values_list('id', flat=True)) == [1]
    monkeypatch.undo()
    # a later message is applied normally
    assert consume(save_payload(instance_data=data(2, 0, name='again')))
    assert SimplestReplica.objects.get(id=2).name == 'again'


@pytest.mark.django_db(transaction=True)
def test_hook_exception_on_update_keeps_old_row(monkeypatch):
    consume(save_payload(instance_data=data(1, 0, name='old')))
    _raise_from_save(monkeypatch, ValueError('boom'), write_first=True)

    with pytest.raises(ValueError):
        consume(save_payload(instance_data=data(1, 1, name='new')))

    row = SimplestReplica.objects.get(id=1)
    assert (row.name, row.cqrs_revision) == ('old', 0)


@pytest.mark.django_db(transaction=True)
def test_hook_exception_on_delete_is_reraised(cqrs_logs, monkeypatch):
    SimplestReplica.objects.create(id=3, name='a', cqrs_revision=0, cqrs_updated=UPDATED)

    def failing_delete(cls, master_data, meta=None):
        SimplestReplica.objects.filter(id=master_data['id']).delete()
        raise RuntimeError('delete exploded')

    monkeypatch.setattr(SimplestReplica, 'cqrs_delete', classmethod(failing_delete))

    with pytest.raises(RuntimeError, match='delete exploded'):
        consume(payload(SignalType.DELETE, 'simplest', data(3, 1), pk=3))

    assert SimplestReplica.objects.filter(id=3).exists()


@pytest.mark.django_db(transaction=True)
def test_one_transaction_per_message(mocker):
    commit = mocker.spy(connection, 'commit')
    rollback = mocker.spy(connection, 'rollback')

    consume(save_payload(instance_data=data(1, 0, name='a')))
    assert commit.call_count == 1
    consume(save_payload(instance_data=data(1, 1, name='b')))
    assert commit.call_count == 2
    consume(payload(SignalType.DELETE, 'simplest', data(1, 2)))
    assert commit.call_count == 3

    assert rollback.call_count == 0
    assert not SimplestReplica.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_failed_message_is_rolled_back_not_committed(mocker, monkeypatch):
    _raise_from_save(monkeypatch, RuntimeError('boom'), write_first=True)
    commit = mocker.spy(connection, 'commit')
    rollback = mocker.spy(connection, 'rollback')

    with pytest.raises(RuntimeError):
        consume(save_payload(instance_data=data(1, 0, name='a')))

    assert commit.call_count == 0
    assert rollback.call_count == 1
    assert not SimplestReplica.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_message_is_committed_on_its_own():
    """Outside any transaction, each consumed message is committed at once."""
    assert connection.get_autocommit()

    consume(save_payload(instance_data=data(1, 0, name='a')))

    assert connection.get_autocommit()
    assert not connection.in_atomic_block
    assert SimplestReplica.objects.get(id=1).name == 'a'


@pytest.mark.django_db
def test_db_error_in_create_is_logged_and_next_message_applies(cqrs_logs):
    # 'name' of AutoFieldsReplica is NOT NULL: the insert fails in the database.
    bad = data(1, 0, name=None, flag=True)

    result = consume(save_payload('auto_fields', bad))

    assert not result
    assert logged(cqrs_logs, 'ERROR')
    assert consume(save_payload(instance_data=data(5, 0, name='after')))
    assert SimplestReplica.objects.get(id=5).name == 'after'


# --- deep copy ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_payload_is_deep_copied(monkeypatch):
    def mutating_save(cls, master_data, previous_data=None, sync=False, meta=None):
        master_data['name'] = 'mutated'
        master_data['nested']['x'] = 'mutated'
        master_data['added'] = True
        previous_data['name'] = 'mutated'
        return True

    monkeypatch.setattr(SimplestReplica, 'cqrs_save', classmethod(mutating_save))
    instance_data = data(1, 0, name='original', nested={'x': 'original'})
    previous = {'name': 'previous'}
    sent = save_payload(instance_data=instance_data, previous_data=previous)

    assert consume(sent)

    assert sent.instance_data == data(1, 0, name='original', nested={'x': 'original'})
    assert sent.previous_data == {'name': 'previous'}


@pytest.mark.django_db
def test_meta_is_deep_copied(monkeypatch):
    def mutating_save(cls, master_data, previous_data=None, sync=False, meta=None):
        meta['inner']['k'] = 'mutated'
        return True

    monkeypatch.setattr(MetaReplica, 'cqrs_save', classmethod(mutating_save))
    sent = save_payload('with_meta', meta={'inner': {'k': 'v'}})

    assert consume(sent)
    assert sent.meta == {'inner': {'k': 'v'}}


# --- no-DB models through the controller ----------------------------------------------------------


@pytest.mark.django_db
def test_no_db_model_opens_no_transaction(mocker, recorded, django_assert_num_queries):
    atomic = mocker.spy(transaction, 'atomic')
    close = mocker.spy(type(connections['default']), 'close_if_unusable_or_obsolete')

    with django_assert_num_queries(0):
        assert consume(save_payload('no_db', data(1, 0)))
        assert consume(payload(SignalType.DELETE, 'no_db', data(1, 1)))

    assert atomic.call_count == 0
    assert close.call_count == 0
    assert [r.get('deleted') for r in recorded] == [None, 1]
    assert not NoDBReplica.objects.exists()


def test_raw_replica_needs_no_database():
    """Without the ``django_db`` mark any database access would raise."""
    assert consume(save_payload('raw', data(1, 0, name='raw'), meta={'m': 1}))
    assert RawReplica.STORE[1]['meta'] == {'m': 1}
    assert RawReplica.STORE[1]['data']['name'] == 'raw'


def test_raw_replica_hook_exception_is_reraised(cqrs_logs, monkeypatch):
    def failing_save(cls, master_data, previous_data=None, sync=False, meta=None):
        raise RuntimeError('raw failure')

    monkeypatch.setattr(RawReplica, 'cqrs_save', classmethod(failing_save))

    with pytest.raises(RuntimeError, match='raw failure'):
        consume(save_payload('raw', data(1, 0)))


# --- loop-back transport round trip ------------------------------------------------------------


@pytest.mark.django_db
def test_loopback_transport_consume_applies_payload():
    assert LoopbackTransport.consume(save_payload(instance_data=data(2, 0, name='via transport')))
    assert SimplestReplica.objects.get(id=2).name == 'via transport'


@pytest.mark.django_db
def test_wire_round_trip_then_consume():
    sent = save_payload(instance_data=data(3, 0, name='wire'), meta={'a': 1})
    received = TransportPayload.from_message(sent.to_dict())

    assert consume(received)
    assert SimplestReplica.objects.get(id=3).name == 'wire'


# --- CQRS_QUERY_TIMEOUT ---------------------------------------------------------------------------


@pytest.mark.sqlite_only
@pytest.mark.django_db
def test_query_timeout_is_noop_on_sqlite():
    conf = cqrs_settings(replica={'CQRS_QUERY_TIMEOUT': 1000})
    with override_settings(CQRS=conf), CaptureQueriesContext(connection) as ctx:
        assert consume(save_payload(instance_data=data(1, 0, name='a')))

    assert SimplestReplica.objects.get(id=1).name == 'a'
    sql = ' '.join(q['sql'] for q in ctx.captured_queries).lower()
    assert 'statement_timeout' not in sql
    assert 'max_execution_time' not in sql


def _record_statement_timeout(monkeypatch):
    """Make SimplestReplica's ``cqrs_save`` record the ``statement_timeout`` it runs under."""
    seen = []

    def cqrs_save(cls, master_data, previous_data=None, sync=False, meta=None):
        with connection.cursor() as cursor:
            cursor.execute('SHOW statement_timeout')
            seen.append(cursor.fetchone()[0])
        return cls.cqrs.save_instance(master_data, previous_data, sync, meta)

    monkeypatch.setattr(SimplestReplica, 'cqrs_save', classmethod(cqrs_save))
    return seen


def _capturers():
    return [w for w in connection.execute_wrappers if isinstance(w, cqrs_logger.LastQueryCapturer)]


@pytest.mark.postgresql_only
@pytest.mark.django_db
def test_query_timeout_on_postgresql(monkeypatch):
    seen = _record_statement_timeout(monkeypatch)

    with override_cqrs(replica={'CQRS_QUERY_TIMEOUT': 1500}):
        assert consume(save_payload(instance_data=data(1, 0, name='a')))

    assert seen == ['1500ms']
    assert SimplestReplica.objects.get(id=1).name == 'a'
    assert not _capturers(), 'no capturer unless CQRS_LOG_TIMED_OUT_QUERIES'


@pytest.mark.postgresql_only
@pytest.mark.django_db
@pytest.mark.parametrize('timeout', [0, None])
def test_no_query_timeout_when_unset(monkeypatch, timeout):
    seen = _record_statement_timeout(monkeypatch)

    with (
        override_cqrs(replica={'CQRS_QUERY_TIMEOUT': timeout}),
        CaptureQueriesContext(connection) as ctx,
    ):
        assert consume(save_payload(instance_data=data(1, 0, name='a')))

    assert seen == ['0']
    assert not [q for q in ctx.captured_queries if 'statement_timeout TO' in q['sql']]


@pytest.mark.postgresql_only
@pytest.mark.django_db
def test_query_timeout_not_set_for_no_db_models():
    with (
        override_cqrs(replica={'CQRS_QUERY_TIMEOUT': 1500}),
        CaptureQueriesContext(connection) as ctx,
    ):
        assert consume(save_payload('no_db', data(1, 0)))

    assert ctx.captured_queries == []


@pytest.mark.django_db
def test_query_capturer_installed_when_logging_timed_out_queries():
    conf = cqrs_settings(replica={'CQRS_QUERY_TIMEOUT': 1500, 'CQRS_LOG_TIMED_OUT_QUERIES': True})

    with override_settings(CQRS=conf), CaptureQueriesContext(connection) as ctx:
        consume(save_payload(instance_data=data(1, 0, name='a')))
        consume(save_payload(instance_data=data(1, 1, name='b')))

    assert len(_capturers()) == 1
    assert 'dj_replica_simplestreplica' in _capturers()[0].query
    timeouts = [q['sql'] for q in ctx.captured_queries if 'statement_timeout' in q['sql']]
    assert timeouts == (
        ['SET LOCAL statement_timeout TO 1500'] * 2 if connection.vendor == 'postgresql' else []
    )


# --- timed-out query log (PostgreSQL: real statement timeouts) ----------------------------------


def _server_error(sql):
    """The ``OperationalError`` PostgreSQL raises for ``sql`` (run in a savepoint)."""
    with (
        pytest.raises(OperationalError) as excinfo,
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)
    return excinfo.value


def _timed_out_query():
    """Run a query that hits a real statement timeout, with the capturer installed."""
    cqrs_logger.install_last_query_capturer(SimplestReplica)
    return _server_error(
        "SET LOCAL statement_timeout TO '50ms'; SELECT pg_sleep(1) AS timed_out_marker"
    )


@pytest.mark.postgresql_only
@pytest.mark.django_db
def test_log_timed_out_queries(caplog):
    caplog.set_level(logging.DEBUG)
    error = _timed_out_query()

    conf = cqrs_settings(
        replica={'CQRS_LOG_TIMED_OUT_QUERIES': True, 'CQRS_QUERY_LOGGER': 'cqrs.timeouts'}
    )
    with override_settings(CQRS=conf):
        cqrs_logger.log_timed_out_queries(error, SimplestReplica)

    records = [r for r in caplog.records if 'Timed out query' in r.getMessage()]
    assert len(records) == 1
    assert records[0].name == 'cqrs.timeouts'
    assert 'pg_sleep(1) AS timed_out_marker' in records[0].getMessage()


@pytest.mark.postgresql_only
@pytest.mark.django_db
def test_log_timed_out_queries_default_logger(caplog):
    caplog.set_level(logging.DEBUG)
    error = _timed_out_query()

    with override_cqrs(replica={'CQRS_LOG_TIMED_OUT_QUERIES': True}):
        cqrs_logger.log_timed_out_queries(error, SimplestReplica)

    assert sum('timed_out_marker' in m for m in logged(caplog)) == 1


@pytest.mark.postgresql_only
@pytest.mark.django_db
def test_timed_out_queries_not_logged_when_disabled(caplog):
    caplog.set_level(logging.DEBUG)
    error = _timed_out_query()

    conf = cqrs_settings(
        replica={'CQRS_LOG_TIMED_OUT_QUERIES': False, 'CQRS_QUERY_LOGGER': 'cqrs.timeouts'}
    )
    with override_settings(CQRS=conf):
        cqrs_logger.log_timed_out_queries(error, SimplestReplica)

    assert not any('Timed out query' in r.getMessage() for r in caplog.records)


@pytest.mark.postgresql_only
@pytest.mark.django_db
@pytest.mark.parametrize(
    'error',
    [
        pytest.param(
            lambda: _server_error(
                "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"
            ),
            id='serialization-failure',
        ),
        pytest.param(lambda: ValueError('not a db error'), id='not-operational'),
    ],
)
def test_other_errors_are_not_logged_as_timeouts(caplog, error):
    caplog.set_level(logging.DEBUG)
    cqrs_logger.install_last_query_capturer(SimplestReplica)
    raised = error()
    SimplestReplica.objects.filter(name='other_error_marker').exists()

    conf = cqrs_settings(
        replica={'CQRS_LOG_TIMED_OUT_QUERIES': True, 'CQRS_QUERY_LOGGER': 'cqrs.timeouts'}
    )
    with override_settings(CQRS=conf):
        cqrs_logger.log_timed_out_queries(raised, SimplestReplica)

    assert not any('Timed out query' in r.getMessage() for r in caplog.records)


def test_mysql_timeout_error_is_recognised():
    """Only the classification of the error: MySQL itself is not tested (docs/settings.md)."""
    assert cqrs_logger.is_timeout_error(OperationalError(3024, 'interrupted'), 'mysql')
    assert not cqrs_logger.is_timeout_error(OperationalError(1205, 'lock wait'), 'mysql')
    assert not cqrs_logger.is_timeout_error(OperationalError(3024, 'interrupted'), 'sqlite')


def _consume_timing_out(caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)

    def slow_save(cls, master_data, previous_data=None, sync=False, meta=None):
        with connection.cursor() as cursor:
            cursor.execute('SELECT pg_sleep(1) AS slow_query_marker')
        return cls.cqrs.save_instance(master_data, previous_data, sync, meta)

    monkeypatch.setattr(SimplestReplica, 'cqrs_save', classmethod(slow_save))
    conf = cqrs_settings(
        replica={
            'CQRS_QUERY_TIMEOUT': 100,
            'CQRS_LOG_TIMED_OUT_QUERIES': True,
            'CQRS_QUERY_LOGGER': 'cqrs.timeouts',
        }
    )
    with override_settings(CQRS=conf):
        # Item 17: a database error is logged and None returned (the transport retries).
        assert consume(save_payload(instance_data=data(1, 0, name='a'))) is None

    timed_out = logged(caplog, logger='cqrs.timeouts')
    assert len(timed_out) == 1
    assert 'Timed out query' in timed_out[0]
    assert 'slow_query_marker' in timed_out[0], 'the query that timed out is logged'
    assert 'canceling statement due to statement timeout' in '\n'.join(logged(caplog, 'ERROR'))
    assert not SimplestReplica.objects.filter(pk=1).exists()


@pytest.mark.postgresql_only
@pytest.mark.django_db(transaction=True)
def test_consume_logs_timed_out_query(caplog, monkeypatch):
    """End to end, as in a worker: a hook's query hits the timeout; that query is logged."""
    _consume_timing_out(caplog, monkeypatch)


@pytest.mark.postgresql_only
@pytest.mark.django_db
def test_consume_logs_timed_out_query_inside_outer_transaction(caplog, monkeypatch):
    """Same, with consume() called inside an enclosing transaction (here the test's)."""
    _consume_timing_out(caplog, monkeypatch)
