"""Helpers used by the master side, the replica side and the transports."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID


def get_message_expiration_dt(message_ttl: int | None = None) -> datetime | None:
    """Return the expiry date of a message published now, or None if messages never expire.

    ``message_ttl`` defaults to ``settings.CQRS['master']['CQRS_MESSAGE_TTL']``.
    """
    from dj_cqrs.conf import cqrs_settings

    ttl = cqrs_settings.master.CQRS_MESSAGE_TTL if message_ttl is None else message_ttl
    if ttl is None:
        return None
    return datetime.now(tz=timezone.utc) + timedelta(seconds=ttl)


def get_delay_queue_max_size() -> int | None:
    """Return the size of a worker's delay queue (None: unbounded)."""
    from dj_cqrs.conf import cqrs_settings

    return cqrs_settings.replica.delay_queue_max_size


def get_messages_prefetch_count_per_worker() -> int:
    """Return the broker prefetch count of one worker: delay queue size + 1, 0 = unlimited."""
    max_size = get_delay_queue_max_size()
    return 0 if max_size is None else max_size + 1


def get_json_valid_value(value: Any) -> Any:
    """Return ``value`` as the master sends it: dates, times, UUIDs and decimals as strings."""
    if isinstance(value, datetime | date | time | UUID | Decimal):
        return str(value)
    return value


def get_correlation_id(signal_type: str, cqrs_id: str, instance_pk: Any, queue: str | None):
    """Return the correlation id of a message from the configured ``correlation_function``."""
    from dj_cqrs.conf import cqrs_settings

    func = cqrs_settings.master.correlation_function
    if func is None:
        return None
    return func(signal_type, cqrs_id, instance_pk, queue)


class _BulkRelateState(threading.local):
    def __init__(self) -> None:
        self.stack: list[_BulkRelateCache] = []


_bulk_relate_state = _BulkRelateState()


class _BulkRelateCache:
    """Instances saved inside ``bulk_relate_cqrs_serialization``, serialized with one query."""

    chunk_size = 1000

    def __init__(self, cqrs_id: str | None) -> None:
        self.cqrs_id = cqrs_id
        self.pending: dict[tuple[type, str], dict[Any, None]] = defaultdict(dict)
        self.cache: dict[tuple[type, str], dict[Any, Any]] = defaultdict(dict)

    def accepts(self, model_cls: type) -> bool:
        return bool(model_cls.CQRS_SERIALIZER) and self.cqrs_id in (None, model_cls.CQRS_ID)

    def register(self, instance: Any, using: str) -> None:
        key = (type(instance), using)
        self.pending[key][instance.pk] = None
        self.cache[key].pop(instance.pk, None)

    def get(self, instance: Any, using: str) -> Any:
        key = (type(instance), using)
        cached = self.cache[key]
        if instance.pk not in cached:
            self._fetch(key)
        return cached.get(instance.pk)

    def _fetch(self, key: tuple[type, str]) -> None:
        model_cls, using = key
        pks = list(self.pending.pop(key, {}))
        queryset = model_cls.relate_cqrs_serialization(model_cls._default_manager.using(using))
        for start in range(0, len(pks), self.chunk_size):
            for obj in queryset.filter(pk__in=pks[start : start + self.chunk_size]):
                self.cache[key][obj.pk] = obj


@contextmanager
def bulk_relate_cqrs_serialization(cqrs_id: str | None = None) -> Iterator[None]:
    """Batch the ``relate_cqrs_serialization`` queries of many saves.

    Inside the block, every master instance with ``CQRS_SERIALIZER`` (or only the one model
    named by ``cqrs_id``) that is saved is remembered; when the first of them is serialized
    for publishing, all of them are read in one query (per model and database) and the others
    are served from that read. Put the block around the transaction so that the on-commit
    publishing happens inside it. Works as a decorator too.
    """
    _bulk_relate_state.stack.append(_BulkRelateCache(cqrs_id))
    try:
        yield
    finally:
        _bulk_relate_state.stack.pop()


def _current_bulk_relate_cache(model_cls: type) -> _BulkRelateCache | None:
    for cache in reversed(_bulk_relate_state.stack):
        if cache.accepts(model_cls):
            return cache
    return None


def apply_query_timeouts(model_cls: type, using: str | None = None) -> None:
    """Apply ``CQRS_QUERY_TIMEOUT`` (milliseconds) to the connection of replica ``model_cls``.

    PostgreSQL and MySQL only. Inside a transaction a PostgreSQL timeout lasts until its end
    (``SET LOCAL``), outside one it is set for the session. With
    ``CQRS_LOG_TIMED_OUT_QUERIES`` the connection also starts remembering its last query.
    """
    from dj_cqrs.conf import cqrs_settings
    from dj_cqrs.constants import DB_VENDOR_PG, SUPPORTED_TIMEOUT_DB_VENDORS
    from dj_cqrs.logger import install_last_query_capturer, model_connection

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
