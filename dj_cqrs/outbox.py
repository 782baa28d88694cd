"""Transactional outbox: no change is lost between the commit and the broker.

With ``settings.CQRS['master']['outbox'] = True`` every SAVE and DELETE also writes a
``CQRSOutboxMessage`` row in the transaction of the change, in the database of the change. The
usual on-commit publishing stays the fast path: once the broker has confirmed a message, its
row is deleted (in batches); when its publish fails, the row is marked due at once. Whatever is
left (broker down, process killed between commit and publish) is published by
``manage.py cqrs_relay``, oldest first, through the same producer.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

from django.db import connections, transaction
from django.db.models import Q
from django.utils import timezone

from dj_cqrs import metrics
from dj_cqrs._logging import logger
from dj_cqrs.constants import SignalType
from dj_cqrs.controller import _outbox, producer
from dj_cqrs.controller._outbox import OutboxRef, is_enabled, record
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.registries import MasterRegistry
from dj_cqrs.utils import get_message_expiration_dt

__all__ = ['OutboxRef', 'RelayError', 'flush_published', 'is_enabled', 'record', 'relay_batch']


def flush_published() -> None:
    """Delete now the rows of every message the broker has confirmed."""
    _outbox.flush_forgotten()


class RelayError(Exception):
    """The relay could not hand its batch to the broker; the rows stay for the next run."""


class _Confirmed:
    """Row ids of one relay batch whose messages were delivered while the batch is open.

    They are deleted in the batch's transaction (or kept with it when it fails); a delivery
    reported after the batch closed goes the usual way (rows deleted in batches).
    """

    def __init__(self, using: str) -> None:
        self._using = using
        self._lock = threading.Lock()
        self._ids: list[int] | None = []

    def add(self, row_id: int) -> None:
        with self._lock:
            if self._ids is not None:
                self._ids.append(row_id)
                return
        _outbox.forget((self._using, row_id))

    def close(self) -> list[int]:
        with self._lock:
            ids, self._ids = self._ids or [], None
        return ids


def relay_batch(using: str, batch_size: int = 500, min_age: float = 5.0) -> int:
    """Publish one batch of due outbox rows, oldest first.

    A row is due when its on-commit publish failed (``failed_at``) or, since that publish may
    still be in flight, once it is ``min_age`` seconds old.

    Runs in one transaction: the rows are locked (``SELECT … FOR UPDATE SKIP LOCKED`` where the
    database has it, so several relays can run at once), handed to the producer, confirmed by
    the broker and deleted. Returns the number of rows handled.
    """
    from dj_cqrs.models import CQRSOutboxMessage

    flush_published()
    confirmed = _Confirmed(using)
    try:
        with transaction.atomic(using=using):
            queryset = CQRSOutboxMessage.objects.using(using).filter(
                Q(failed_at__isnull=False)
                | Q(created__lte=timezone.now() - timedelta(seconds=min_age))
            )
            if connections[using].features.has_select_for_update_skip_locked:
                queryset = queryset.select_for_update(skip_locked=True)
            rows = list(queryset.order_by('id')[:batch_size])
            if not rows:
                return 0
            sent: list[str] = []  # the CQRS_ID of each message sent
            for row_id, payload in _payloads(using, rows):
                if payload is None:
                    confirmed.add(row_id)
                elif producer.dispatch(payload, lambda row_id=row_id: confirmed.add(row_id)):
                    sent.append(payload.cqrs_id)
                else:
                    raise RelayError(f'{payload.signal_type} {payload.cqrs_id} {payload.pk}')
            if not producer.flush():
                raise RelayError('the broker did not confirm the batch')
            _outbox.delete(using, confirmed.close())
    finally:
        confirmed.close()
    if metrics.master is not None:
        for cqrs_id, amount in Counter(sent).items():
            metrics.master.relayed.labels(cqrs_id).inc(amount)
    logger.info('CQRS outbox relay: %s messages published from %s.', len(sent), using)
    return len(rows)


def _payloads(using: str, rows: list) -> list[tuple[int, TransportPayload | None]]:
    """The message of each row (None when there is nothing left to send)."""
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
    payloads: list[tuple[int, TransportPayload | None]] = []
    for row in rows:
        payload = None
        if row.signal_type == SignalType.DELETE:
            payload = TransportPayload.from_message(row.payload)
            payload.expires = get_message_expiration_dt()
        else:
            instance = instances.get(row.cqrs_id, {}).get(row.instance_pk)
            if instance is not None:
                payload = producer.build_save_payload(
                    type(instance),
                    instance,
                    using,
                    sync=row.signal_type == SignalType.SYNC,
                    queue=row.queue,
                    previous_data=row.previous_data,
                )
        payloads.append((row.id, payload))
    return payloads
