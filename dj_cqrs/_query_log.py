"""Logging of the query that hit ``CQRS_QUERY_TIMEOUT`` (``CQRS_LOG_TIMED_OUT_QUERIES``)."""

from __future__ import annotations

import logging
from typing import Any

from django.db import OperationalError, connections

from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import (
    DB_VENDOR_MYSQL,
    DB_VENDOR_PG,
    MYSQL_MAX_EXECUTION_TIME_EXCEEDED,
    PG_QUERY_CANCELED,
)

_TRANSACTION_STATEMENTS = ('SAVEPOINT', 'RELEASE SAVEPOINT', 'ROLLBACK TO SAVEPOINT')


class LastQueryCapturer:
    """A connection execute wrapper that remembers the last SQL statement run."""

    def __init__(self) -> None:
        self.query: str | None = None

    def __call__(self, execute, sql, params, many, context):
        # Savepoint housekeeping after a failure must not hide the query that failed.
        if not sql.lstrip().upper().startswith(_TRANSACTION_STATEMENTS):
            self.query = sql if not params or many else f'{sql} -- params: {params!r}'
        return execute(sql, params, many, context)


def _get_capturer(connection: Any) -> LastQueryCapturer | None:
    for wrapper in connection.execute_wrappers:
        if isinstance(wrapper, LastQueryCapturer):
            return wrapper
    return None


def install_last_query_capturer(connection: Any) -> None:
    """Make ``connection`` remember its last query (once)."""
    if _get_capturer(connection) is None:
        connection.execute_wrappers.append(LastQueryCapturer())


def _is_timeout(error: BaseException, vendor: str) -> bool:
    if not isinstance(error, OperationalError):
        return False
    cause = error.__cause__ or error
    if vendor == DB_VENDOR_PG:
        code = getattr(cause, 'pgcode', None) or getattr(cause, 'sqlstate', None)
        return code == PG_QUERY_CANCELED
    if vendor == DB_VENDOR_MYSQL:
        return bool(error.args) and error.args[0] == MYSQL_MAX_EXECUTION_TIME_EXCEEDED
    return False


def log_timed_out_queries(error: BaseException, using: str) -> None:
    """Log the query that ran into the statement timeout, when asked to."""
    replica = cqrs_settings.replica
    if not replica.CQRS_LOG_TIMED_OUT_QUERIES:
        return
    connection = connections[using]
    if not _is_timeout(error, connection.vendor):
        return
    capturer = _get_capturer(connection)
    if capturer is None or not capturer.query:
        return
    logging.getLogger(replica.CQRS_QUERY_LOGGER or 'django-cqrs').error(
        'Timed out query:\n%s', capturer.query
    )
