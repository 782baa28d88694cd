"""The outbox table as the producer uses it: write a row with a change, forget it once sent.

Rows are written with one raw INSERT in the transaction of the change, in its database. Rows
of delivered messages are deleted in batches (every ``_DELETE_BATCH`` rows or
``_DELETE_INTERVAL`` seconds, and at exit) by the thread that publishes: a delivery may be
reported from a broker client's own thread, which should not open database connections.

A row whose publish failed gets ``failed_at``, which makes it due for the relay at once: the
publishing thread marks its own failure together with the failures reported meanwhile (one
UPDATE per database); failures reported from a broker client's thread are batched like the
deletions.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import ujson
from django.db import connections
from django.utils import timezone

from dj_cqrs._logging import logger
from dj_cqrs.conf import cqrs_settings

OutboxRef = tuple[str, int]
"""``(database alias, row id)`` of an outbox row."""

_INSERT_SQL = (
    'INSERT INTO dj_cqrs_outbox '
    '(created, cqrs_id, instance_pk, signal_type, queue, previous_data, payload) '
    'VALUES (%s, %s, %s, %s, %s, %s, %s)'
)
_DELETE_BATCH = 200
_DELETE_INTERVAL = 1.0
_MARK_CHUNK = 900


def is_enabled() -> bool:
    """Whether the outbox is switched on for this service."""
    return bool(cqrs_settings.master.outbox)


def record(
    using: str,
    cqrs_id: str,
    instance_pk: Any,
    signal_type: str,
    queue: str | None = None,
    previous_data: dict | None = None,
    payload: dict | None = None,
) -> OutboxRef:
    """Write an outbox row in the current transaction of ``using`` (one INSERT, no ORM)."""
    connection = connections[using]
    params = [
        connection.ops.adapt_datetimefield_value(timezone.now()),
        cqrs_id,
        str(instance_pk),
        signal_type,
        queue,
        None if previous_data is None else ujson.dumps(previous_data),
        None if payload is None else ujson.dumps(payload),
    ]
    returning = connection.features.can_return_columns_from_insert
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_SQL + (' RETURNING id' if returning else ''), params)
        row_id = cursor.fetchone()[0] if returning else cursor.lastrowid
    return using, row_id


def update_previous_data(ref: OutboxRef, previous_data: dict | None) -> None:
    """Keep a SAVE row's tracked previous values complete after another save in its transaction."""
    using, row_id = ref
    with connections[using].cursor() as cursor:
        cursor.execute(
            'UPDATE dj_cqrs_outbox SET previous_data = %s WHERE id = %s',
            [None if previous_data is None else ujson.dumps(previous_data), row_id],
        )


def delete(using: str, ids: list[int]) -> None:
    """Delete outbox rows now, in the current transaction of ``using`` if there is one."""
    if not ids:
        return
    from dj_cqrs.models import CQRSOutboxMessage

    CQRSOutboxMessage.objects.using(using).filter(id__in=ids)._raw_delete(using)


class _RowBatch:
    """Outbox row ids gathered from any thread and written in one statement per database.

    ``write(using, ids)`` does the work; ``failure`` is the warning logged when it fails.
    """

    def __init__(self, write: Callable[[str, list[int]], None], failure: str) -> None:
        self._write = write
        self._failure = failure
        self._lock = threading.Lock()
        self._ids: dict[str, list[int]] = defaultdict(list)
        self._count = 0
        self._last_flush = time.monotonic()

    def add(self, ref: OutboxRef) -> None:
        with self._lock:
            self._ids[ref[0]].append(ref[1])
            self._count += 1

    def flush_due(self) -> None:
        if self._count and (
            self._count >= _DELETE_BATCH or time.monotonic() - self._last_flush >= _DELETE_INTERVAL
        ):
            self.flush()

    def flush(self, ref: OutboxRef | None = None) -> None:
        """Write the rows gathered so far, and ``ref`` with them."""
        with self._lock:
            if not self._count and ref is None:
                return
            pending, self._ids = self._ids, defaultdict(list)
            self._count = 0
            self._last_flush = time.monotonic()
        if ref is not None:
            pending[ref[0]].append(ref[1])
        for using, ids in pending.items():
            try:
                self._write(using, ids)
            except Exception as exc:
                logger.warning(self._failure, len(ids), exc)


def _mark_failed(using: str, ids: list[int]) -> None:
    """One UPDATE for ``ids`` (per ``_MARK_CHUNK`` ids: databases limit query parameters)."""
    connection = connections[using]
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        for start in range(0, len(ids), _MARK_CHUNK):
            chunk = ids[start : start + _MARK_CHUNK]
            cursor.execute(
                'UPDATE dj_cqrs_outbox SET failed_at = %s WHERE id IN ({})'.format(
                    ', '.join(['%s'] * len(chunk))
                ),
                [now, *chunk],
            )


_delivered = _RowBatch(
    delete,
    'CQRS outbox: %s confirmed rows could not be deleted (%s); the relay will publish them again.',
)
_failed = _RowBatch(
    _mark_failed,
    'CQRS outbox: %s rows could not be marked as failed (%s); the relay will publish them once '
    'they are old enough.',
)
atexit.register(_delivered.flush)
atexit.register(_failed.flush)


def forget(ref: OutboxRef | None) -> None:
    """The message of outbox row ``ref`` reached the broker: its row can go (from any thread)."""
    if ref is not None:
        _delivered.add(ref)


def failed(ref: OutboxRef | None) -> None:
    """The publish of outbox row ``ref`` failed (from any thread): the row is due for the relay.

    The row is marked by the next ``mark_failed`` or ``flush_due``, whichever comes first.
    """
    if ref is not None:
        _failed.add(ref)


def mark_failed(ref: OutboxRef | None = None) -> None:
    """Mark now, in the publishing thread, ``ref`` and every row reported by ``failed``."""
    _failed.flush(ref)


def flush_due() -> None:
    """Delete the rows of delivered messages (mark those of failed ones) if a batch is full or
    old enough."""
    _delivered.flush_due()
    _failed.flush_due()


def flush_forgotten() -> None:
    """Delete the rows of every delivered message and mark every failed row now."""
    _delivered.flush()
    _failed.flush()
