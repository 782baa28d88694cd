"""Helpers used by the master side, the replica side and the transports."""

from __future__ import annotations

from collections import defaultdict
from contextlib import ContextDecorator
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from uuid import UUID

from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import DB_VENDOR_PG, SUPPORTED_TIMEOUT_DB_VENDORS
from dj_cqrs.correlation import get_correlation_id as get_correlation_id
from dj_cqrs.logger import install_last_query_capturer, model_connection
from dj_cqrs.state import cqrs_state


def get_message_expiration_dt(message_ttl: int | None = None) -> datetime | None:
    """Return the expiry date of a message published now, or None if messages never expire.

    ``message_ttl`` defaults to ``settings.CQRS['master']['CQRS_MESSAGE_TTL']``.
    """
    ttl = cqrs_settings.master.CQRS_MESSAGE_TTL if message_ttl is None else message_ttl
    if ttl is None:
        return None
    return datetime.now(tz=timezone.utc) + timedelta(seconds=ttl)


def get_delay_queue_max_size() -> int | None:
    """Return the size of a worker's delay queue (None: unbounded)."""
    return cqrs_settings.replica.delay_queue_max_size


def get_messages_prefetch_count_per_worker() -> int:
    """Return the broker prefetch count of one worker: delay queue size + 1, 0 = unlimited."""
    max_size = get_delay_queue_max_size()
    return 0 if max_size is None else max_size + 1


def get_json_valid_value(value: Any) -> Any:
    """Return ``value`` as the master sends it: dates, times and UUIDs as strings.

    Other values are kept; ``Decimal`` values are written as JSON numbers by the encoder.
    """
    if isinstance(value, datetime | date | time | UUID):
        return str(value)
    return value


class _BulkRelateCM(ContextDecorator):
    """Instances saved inside ``bulk_relate_cqrs_serialization``, serialized with one query.

    While active it is ``cqrs_state.bulk_relate_cm`` (blocks nest: the inner one comes first
    and the outer ones stay reachable through ``outer``).
    """

    chunk_size = 1000

    def __init__(self, cqrs_id: str | None = None) -> None:
        self.cqrs_id = cqrs_id
        self.outer: _BulkRelateCM | None = None
        self._depth = 0
        self._pending: dict[tuple[type, str | None], dict[Any, None]] = defaultdict(dict)
        self._cache: dict[tuple[type, str | None], dict[Any, Any]] = defaultdict(dict)

    def accepts(self, model_cls: type) -> bool:
        """Whether saves of ``model_cls`` are batched by this block."""
        return bool(getattr(model_cls, 'CQRS_SERIALIZER', None)) and self.cqrs_id in (
            None,
            model_cls.CQRS_ID,
        )

    def register(self, instance: Any, using: str | None = None) -> None:
        """Remember a saved instance: it is read with the others when one is serialized."""
        if not self.accepts(type(instance)):
            return
        key = (type(instance), using)
        self._pending[key][instance.pk] = None
        self._cache[key].pop(instance.pk, None)

    def get_cached_instance(self, instance: Any, using: str | None = None) -> Any:
        """The instance as read (with ``relate_cqrs_serialization``) in the batch, or None."""
        if not self.accepts(type(instance)):
            return None
        key = (type(instance), using)
        cached = self._cache[key]
        if instance.pk not in cached and self._pending.get(key):
            self._fetch(key)
        return cached.get(instance.pk)

    def _fetch(self, key: tuple[type, str | None]) -> None:
        model_cls, using = key
        pks = list(self._pending.pop(key, {}))
        queryset = model_cls.relate_cqrs_serialization(model_cls._default_manager.using(using))
        for start in range(0, len(pks), self.chunk_size):
            for obj in queryset.filter(pk__in=pks[start : start + self.chunk_size]).order_by():
                self._cache[key][obj.pk] = obj

    def _recreate_cm(self) -> _BulkRelateCM:
        return type(self)(self.cqrs_id)

    def __enter__(self) -> None:
        if not self._depth:
            self.outer = cqrs_state.bulk_relate_cm
            cqrs_state.bulk_relate_cm = self
        self._depth += 1

    def __exit__(self, *exc_info: Any) -> None:
        self._depth -= 1
        if not self._depth:
            cqrs_state.bulk_relate_cm = self.outer
            self.outer = None
            self._pending.clear()
            self._cache.clear()


def bulk_relate_cqrs_serialization(cqrs_id: str | None = None) -> _BulkRelateCM:
    """Batch the ``relate_cqrs_serialization`` queries of many saves.

    Inside the block, every master instance with ``CQRS_SERIALIZER`` (or only the one model
    named by ``cqrs_id``) that is saved is remembered; when the first of them is serialized
    for publishing, all of them are read in one query (per model and database) and the others
    are served from that read. Put the block around the transaction so that the on-commit
    publishing happens inside it. Works as a decorator too.
    """
    return _BulkRelateCM(cqrs_id)


def _current_bulk_relate_cm(model_cls: type) -> _BulkRelateCM | None:
    """The innermost active block of this thread that batches ``model_cls``."""
    cm = cqrs_state.bulk_relate_cm
    while cm is not None:
        if cm.accepts(model_cls):
            return cm
        cm = cm.outer
    return None


def apply_query_timeouts(model_cls: type, using: str | None = None) -> None:
    """Apply ``CQRS_QUERY_TIMEOUT`` (milliseconds) to the connection of replica ``model_cls``.

    PostgreSQL and MySQL only. Inside a transaction a PostgreSQL timeout lasts until its end
    (``SET LOCAL``), outside one it is set for the session. With
    ``CQRS_LOG_TIMED_OUT_QUERIES`` the connection also starts remembering its last query.
    """
    timeout = int(cqrs_settings.replica.CQRS_QUERY_TIMEOUT or 0)
    if timeout <= 0:
        return
    if cqrs_settings.replica.CQRS_LOG_TIMED_OUT_QUERIES:
        install_last_query_capturer(model_cls, using)
    connection = model_connection(model_cls, using)
    if connection.vendor not in SUPPORTED_TIMEOUT_DB_VENDORS:
        return
    if connection.vendor == DB_VENDOR_PG:
        scope = 'LOCAL ' if connection.in_atomic_block else ''
        statement = f'SET {scope}statement_timeout TO %s'
    else:
        statement = 'SET SESSION MAX_EXECUTION_TIME=%s'
    with connection.cursor() as cursor:
        cursor.execute(statement, [timeout])
