"""Logging of the replica query that hit ``CQRS_QUERY_TIMEOUT`` (``CQRS_LOG_TIMED_OUT_QUERIES``).

``install_last_query_capturer`` makes the connection of a replica model remember the last
statement it ran; ``log_timed_out_queries`` logs that statement when an error is the database's
statement timeout. The consumer controller calls both; user code may too.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import OperationalError, connections, router

from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import (
    DB_VENDOR_MYSQL,
    MYSQL_TIMEOUT_ERROR_CODE,
    PG_QUERY_CANCELED,
    PG_TIMEOUT_FLAG,
    SUPPORTED_TIMEOUT_DB_VENDORS,
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


def model_connection(model_cls: type, using: str | None = None) -> Any:
    """The connection replica data of ``model_cls`` is written through (or that of ``using``)."""
    return connections[using or router.db_for_write(model_cls)]


def _get_capturer(connection: Any) -> LastQueryCapturer | None:
    for wrapper in connection.execute_wrappers:
        if isinstance(wrapper, LastQueryCapturer):
            return wrapper
    return None


def install_last_query_capturer(model_cls: type, using: str | None = None) -> None:
    """Make the connection of ``model_cls`` remember its last query (installed once)."""
    connection = model_connection(model_cls, using)
    if _get_capturer(connection) is None:
        connection.execute_wrappers.append(LastQueryCapturer())


def is_timeout_error(error: BaseException, vendor: str) -> bool:
    """Whether ``error`` is the statement timeout of a ``vendor`` database."""
    if vendor not in SUPPORTED_TIMEOUT_DB_VENDORS or not isinstance(error, OperationalError):
        return False
    if not error.args:
        return False
    if vendor == DB_VENDOR_MYSQL:
        return error.args[0] == MYSQL_TIMEOUT_ERROR_CODE
    # The SQLSTATE when the driver gives one (messages may be translated), else the message.
    cause = error.__cause__ or error
    code = getattr(cause, 'pgcode', None) or getattr(cause, 'sqlstate', None)
    if code:
        return code == PG_QUERY_CANCELED
    return isinstance(error.args[0], str) and PG_TIMEOUT_FLAG in error.args[0]


def log_timed_out_queries(error: BaseException, model_cls: type, using: str | None = None) -> None:
    """Log the query of ``model_cls``'s connection that ran into the statement timeout.

    Does nothing unless ``CQRS_LOG_TIMED_OUT_QUERIES`` is set, ``error`` is a timeout and the
    capturer recorded a query. Logs on ``CQRS_QUERY_LOGGER`` (default ``django-cqrs``).
    """
    replica = cqrs_settings.replica
    if not replica.CQRS_LOG_TIMED_OUT_QUERIES:
        return
    connection = model_connection(model_cls, using)
    if not is_timeout_error(error, connection.vendor):
        return
    capturer = _get_capturer(connection)
    if capturer is None or not capturer.query:
        return
    logging.getLogger(replica.CQRS_QUERY_LOGGER or 'django-cqrs').error(
        'Timed out query:\n%s', capturer.query
    )


__all__ = ['install_last_query_capturer', 'log_timed_out_queries']
