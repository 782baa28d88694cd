"""What a replica remembers of its progress: the last applied message and the lag, per CQRS_ID.

A replica worker calls ``record`` once per batch, after the batch committed: one statement per
database upserts ``CQRSReplicaStatus`` (when this service last applied a message of each
CQRS_ID, and the newest master ``cqrs_updated`` it applied) and ``CQRSLagSample`` (the largest
lag seen in each minute: time of apply minus the master's ``cqrs_updated``). SYNC messages count
as applied but not in the lag: they carry the row's last change, not the time they were sent.
Samples older than ``LAG_HISTORY`` are deleted by ``purge``. ``dj_cqrs.status`` reads both.

The models are defined here, below the transports that write them, and exported by
``dj_cqrs.models``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connections, models, router, transaction
from django.utils import timezone

from dj_cqrs.constants import SignalType
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.tombstones import _datetime

# How long the per-minute lag samples are kept.
LAG_HISTORY = timedelta(hours=2)


class CQRSReplicaStatus(models.Model):
    """The last message of a CQRS_ID this replica applied (written once per batch)."""

    cqrs_id = models.CharField(max_length=255, primary_key=True)
    last_applied = models.DateTimeField()
    last_master_updated = models.DateTimeField(null=True)

    class Meta:
        app_label = 'dj_cqrs'
        db_table = 'dj_cqrs_replica_status'
        verbose_name = 'CQRS replica status'
        verbose_name_plural = 'CQRS replica status'

    def __str__(self) -> str:
        return f'{self.cqrs_id} {self.last_applied}'


class CQRSLagSample(models.Model):
    """The largest replication lag of a CQRS_ID in one minute, in seconds."""

    id = models.BigAutoField(primary_key=True)
    cqrs_id = models.CharField(max_length=255)
    minute = models.DateTimeField(db_index=True)
    max_lag = models.FloatField()

    class Meta:
        app_label = 'dj_cqrs'
        db_table = 'dj_cqrs_lag_sample'
        verbose_name = 'CQRS lag sample'
        constraints = [
            models.UniqueConstraint(fields=['cqrs_id', 'minute'], name='dj_cqrs_lag_sample_minute')
        ]

    def __str__(self) -> str:
        return f'{self.cqrs_id} {self.minute} {self.max_lag}'


@dataclass
class Progress:
    """What one batch applied of one CQRS_ID: the oldest and newest master ``cqrs_updated``
    of its SAVE and DELETE messages (None when it had none)."""

    oldest: datetime | None = None
    newest: datetime | None = None


def summarize(payloads: Iterable[TransportPayload]) -> dict[str, Progress]:
    """The progress per CQRS_ID of the applied ``payloads``."""
    found: dict[str, Progress] = {}
    for payload in payloads:
        progress = found.get(payload.cqrs_id)
        if progress is None:
            progress = found[payload.cqrs_id] = Progress()
        if payload.signal_type == SignalType.SYNC:
            continue
        data = payload.instance_data
        value = data.get('cqrs_updated') if isinstance(data, dict) else None
        if value is None:
            continue
        updated = _parse(value)
        if updated is None:
            continue
        if progress.oldest is None or updated < progress.oldest:
            progress.oldest = updated
        if progress.newest is None or updated > progress.newest:
            progress.newest = updated
    return found


def database() -> str:
    """The database of the status tables (``router.db_for_write``)."""
    return router.db_for_write(CQRSReplicaStatus)


def record(using: str, progress: dict[str, Progress], now: datetime | None = None) -> None:
    """Upsert the status rows and the lag samples of ``progress`` in database ``using``.

    One statement on PostgreSQL, two in one transaction on SQLite; other databases go through
    the ORM. Never moves ``last_applied``, ``last_master_updated`` or a minute's lag back.
    """
    if not progress:
        return
    now = now or timezone.now()
    minute = now.replace(second=0, microsecond=0)
    status_rows = [(cqrs_id, now, p.newest) for cqrs_id, p in progress.items()]
    lag_rows = [
        (cqrs_id, minute, max((now - p.oldest).total_seconds(), 0.0))
        for cqrs_id, p in progress.items()
        if p.oldest is not None
    ]
    connection = connections[using]
    if connection.vendor in ('postgresql', 'sqlite'):
        _upsert_sql(connection, status_rows, lag_rows)
    else:
        _upsert_orm(using, status_rows, lag_rows)


def purge(using: str, now: datetime | None = None) -> int:
    """Delete the lag samples older than ``LAG_HISTORY``; one query."""
    limit = (now or timezone.now()) - LAG_HISTORY
    deleted, _ = CQRSLagSample._default_manager.using(using).filter(minute__lt=limit).delete()
    return deleted


def _later(table: str, column: str, quote: Any) -> str:
    """``column = the later of the stored and the new value`` (a NULL is never the later)."""
    old, new = f'{quote(table)}.{quote(column)}', f'EXCLUDED.{quote(column)}'
    return f'{quote(column)} = CASE WHEN {old} IS NULL OR {new} > {old} THEN {new} ELSE {old} END'


def _values(connection: Any, rows: list[tuple], datetimes: tuple[int, ...]) -> tuple[str, list]:
    adapt = connection.ops.adapt_datetimefield_value
    params: list[Any] = []
    for row in rows:
        params.extend(adapt(v) if i in datetimes else v for i, v in enumerate(row))
    placeholders = ', '.join(['(%s, %s, %s)'] * len(rows))
    return placeholders, params


def _upsert_sql(connection: Any, status_rows: list[tuple], lag_rows: list[tuple]) -> None:
    quote = connection.ops.quote_name
    status_table = CQRSReplicaStatus._meta.db_table
    lag_table = CQRSLagSample._meta.db_table
    values, params = _values(connection, status_rows, (1, 2))
    status_sql = (
        f'INSERT INTO {quote(status_table)} '
        f'({quote("cqrs_id")}, {quote("last_applied")}, {quote("last_master_updated")}) '
        f'VALUES {values} ON CONFLICT ({quote("cqrs_id")}) DO UPDATE SET '
        f'{_later(status_table, "last_applied", quote)}, '
        f'{_later(status_table, "last_master_updated", quote)}'
    )
    if not lag_rows:
        with connection.cursor() as cursor:
            cursor.execute(status_sql, params)
        return
    values, lag_params = _values(connection, lag_rows, (1,))
    lag_sql = (
        f'INSERT INTO {quote(lag_table)} ({quote("cqrs_id")}, {quote("minute")}, '
        f'{quote("max_lag")}) VALUES {values} '
        f'ON CONFLICT ({quote("cqrs_id")}, {quote("minute")}) DO UPDATE SET '
        f'{_later(lag_table, "max_lag", quote)}'
    )
    with connection.cursor() as cursor:
        if connection.vendor == 'postgresql':
            # One statement: the status upsert runs as a data-modifying WITH clause.
            cursor.execute(f'WITH status AS ({status_sql}) {lag_sql}', params + lag_params)
            return
        with transaction.atomic(using=connection.alias):
            cursor.execute(status_sql, params)
            cursor.execute(lag_sql, lag_params)


def _upsert_orm(using: str, status_rows: list[tuple], lag_rows: list[tuple]) -> None:
    with transaction.atomic(using=using):
        statuses = CQRSReplicaStatus._default_manager.using(using)
        for cqrs_id, applied, updated in status_rows:
            row, created = statuses.select_for_update().get_or_create(
                cqrs_id=cqrs_id, defaults={'last_applied': applied, 'last_master_updated': updated}
            )
            if not created:
                row.last_applied = max(row.last_applied, applied)
                if updated is not None and (
                    row.last_master_updated is None or updated > row.last_master_updated
                ):
                    row.last_master_updated = updated
                row.save(using=using)
        samples = CQRSLagSample._default_manager.using(using)
        for cqrs_id, minute, lag in lag_rows:
            row, created = samples.select_for_update().get_or_create(
                cqrs_id=cqrs_id, minute=minute, defaults={'max_lag': lag}
            )
            if not created and lag > row.max_lag:
                row.max_lag = lag
                row.save(using=using)


def _parse(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return _datetime(value)
        if parsed.tzinfo is not None and settings.USE_TZ:
            return parsed
    return _datetime(value)
