"""Transactional outbox: no change is lost between the commit and the broker.

With ``settings.CQRS['master']['outbox'] = True`` every SAVE and DELETE also writes a
``CQRSOutboxMessage`` row in the transaction of the change, in the database of the change. The
usual on-commit publishing stays the fast path: once the broker has confirmed a message, its
row is deleted (in batches). Whatever is left (broker down, process killed between commit and
publish) is published by ``manage.py cqrs_relay``, oldest first.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

import ujson
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from dj_cqrs._logging import logger
from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import SignalType
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.registries import MasterRegistry
from dj_cqrs.utils import get_message_expiration_dt

OutboxRef = tuple[str, int]

_INSERT_SQL = (
    'INSERT INTO dj_cqrs_outbox '
    '(created, cqrs_id, instance_pk, signal_type, queue, previous_data, payload) '
    'VALUES (%s, %s, %s, %s, %s, %s, %s)'
)
_DELETE_BATCH = 200
_DELETE_INTERVAL = 1.0


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


def attach(payload: TransportPayload, ref: OutboxRef | None) -> None:
    """Remember on the payload which outbox row it settles (never sent over the wire)."""
    payload._cqrs_outbox = ref


def ref_of(payload: TransportPayload) -> OutboxRef | None:
    return getattr(payload, '_cqrs_outbox', None)


class _Published:
    """Outbox rows whose messages the broker confirmed, deleted in batches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, list[int]] = defaultdict(list)
        self._count = 0
        self._last_flush = time.monotonic()

    def add(self, ref: OutboxRef) -> None:
        with self._lock:
            self._ids[ref[0]].append(ref[1])
            self._count += 1
            due = (
                self._count >= _DELETE_BATCH
                or time.monotonic() - self._last_flush >= _DELETE_INTERVAL
            )
        if due:
            self.flush()

    def flush(self) -> None:
        if not self._count:
            return
        from dj_cqrs.models import CQRSOutboxMessage

        with self._lock:
            pending, self._ids = self._ids, defaultdict(list)
            self._count = 0
            self._last_flush = time.monotonic()
        for using, ids in pending.items():
            try:
                queryset = CQRSOutboxMessage.objects.using(using).filter(id__in=ids)
                queryset._raw_delete(using)
            except DatabaseError as exc:
                logger.warning(
                    'CQRS outbox: %s confirmed rows could not be deleted (%s); the relay will '
                    'publish them again.',
                    len(ids),
                    exc,
                )


_published = _Published()
atexit.register(_published.flush)


def mark_published(ref: OutboxRef | None) -> None:
    """The message of outbox row ``ref`` reached the broker: its row can go."""
    if ref is not None:
        _published.add(ref)


def flush_published() -> None:
    """Delete the rows of every confirmed message now."""
    _published.flush()


class RelayError(Exception):
    """The relay could not hand its batch to the broker; the rows stay for the next run."""


def relay_batch(using: str, batch_size: int = 500, min_age: float = 5.0) -> int:
    """Publish one batch of outbox rows older than ``min_age`` seconds, oldest first.

    Runs in one transaction: the rows are locked (``SELECT … FOR UPDATE SKIP LOCKED`` where the
    database has it, so several relays can run at once), published, confirmed by the broker
    and deleted. Returns the number of rows handled.
    """
    from dj_cqrs.controller import producer
    from dj_cqrs.models import CQRSOutboxMessage
    from dj_cqrs.transport import current_transport

    flush_published()
    with transaction.atomic(using=using):
        queryset = CQRSOutboxMessage.objects.using(using).filter(
            created__lte=timezone.now() - timedelta(seconds=min_age)
        )
        if connections[using].features.has_select_for_update_skip_locked:
            queryset = queryset.select_for_update(skip_locked=True)
        rows = list(queryset.order_by('id')[:batch_size])
        if not rows:
            return 0
        payloads = _payloads(using, rows)
        for payload in payloads:
            if producer.produce(payload) is False:
                raise RelayError(f'{payload.signal_type} {payload.cqrs_id} {payload.pk}')
        flush = getattr(current_transport, 'flush', None)
        if flush is not None and not flush():
            raise RelayError('the broker did not confirm the batch')
        CQRSOutboxMessage.objects.using(using).filter(id__in=[r.id for r in rows])._raw_delete(
            using
        )
    logger.info('CQRS outbox relay: %s messages published from %s.', len(payloads), using)
    return len(rows)


def _payloads(using: str, rows: list) -> list[TransportPayload]:
    from dj_cqrs.signals import build_save_payload

    instances: dict[str, dict[str, Any]] = {}
    by_model: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row.signal_type != SignalType.DELETE:
            by_model[row.cqrs_id].append(row.instance_pk)
    for cqrs_id, pks in by_model.items():
        model = MasterRegistry.models.get(cqrs_id)
        if model is None:
            logger.error('CQRS outbox relay: no master model for CQRS_ID %s.', cqrs_id)
            continue
        queryset = model.relate_cqrs_serialization(model._default_manager.using(using))
        instances[cqrs_id] = {str(obj.pk): obj for obj in queryset.filter(pk__in=pks)}
    payloads = []
    for row in rows:
        if row.signal_type == SignalType.DELETE:
            payload = TransportPayload.from_message(row.payload)
            payload.expires = get_message_expiration_dt()
        else:
            instance = instances.get(row.cqrs_id, {}).get(row.instance_pk)
            if instance is None:
                continue
            payload = build_save_payload(
                type(instance),
                instance,
                using,
                sync=row.signal_type == SignalType.SYNC,
                queue=row.queue,
                previous_data=row.previous_data,
            )
        payloads.append(payload)
    return payloads
