"""Tombstones: what a replica remembers of the rows it deleted, so that they stay deleted.

A DELETE leaves a tombstone ``(CQRS_ID, pk, cqrs_revision, cqrs_updated)`` in the replica
model's database. A later SAVE or SYNC of that pk whose revision is not newer than the
tombstone's and whose ``cqrs_updated`` is not later is stale (a message of the deleted row that
arrived late); a newer one (the master created the row again) applies and removes the
tombstone. Tombstones live ``CQRS['replica']['tombstone_ttl']`` seconds; a ttl of None or 0
turns them off.

The model is defined here, below the replica managers that use it, and exported by
``dj_cqrs.models``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, models
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from dj_cqrs.conf import cqrs_settings

_CHUNK = 1000
# The first key of the PostgreSQL advisory locks taken by ``lock`` ('CQRS').
_LOCK_SPACE = 0x43515253


class CQRSTombstone(models.Model):
    """A replica row deleted by a CQRS DELETE (or by ``cqrs_deleted_sync_replica``)."""

    id = models.BigAutoField(primary_key=True)
    cqrs_id = models.CharField(max_length=255)
    instance_pk = models.CharField(max_length=255)
    cqrs_revision = models.BigIntegerField(null=True)
    cqrs_updated = models.DateTimeField(null=True)
    created = models.DateTimeField(db_index=True)

    class Meta:
        app_label = 'dj_cqrs'
        db_table = 'dj_cqrs_tombstone'
        verbose_name = 'CQRS tombstone'
        constraints = [
            models.UniqueConstraint(
                fields=['cqrs_id', 'instance_pk'], name='dj_cqrs_tombstone_cqrs_id_pk'
            ),
        ]

    def __str__(self) -> str:
        return f'{self.cqrs_id} {self.instance_pk} {self.cqrs_revision}'


class Mark(NamedTuple):
    """The revision and ``cqrs_updated`` of a message or a tombstone (None: unknown)."""

    revision: int | None
    updated: datetime | None


def enabled() -> bool:
    """Whether the replica keeps tombstones (``tombstone_ttl`` is neither None nor 0)."""
    return bool(cqrs_settings.replica.tombstone_ttl)


def key(model: Any, value: Any) -> str:
    """The tombstone's ``instance_pk`` of primary key ``value`` of ``model``."""
    return str(model._meta.pk.to_python(value))


def mark(data: dict) -> Mark | None:
    """The mark of message data; None when neither value can be read."""
    result = Mark(_revision(data.get('cqrs_revision')), _datetime(data.get('cqrs_updated')))
    if result.revision is None and result.updated is None:
        return None
    return result


def is_stale(new: Mark | None, tombstone: Mark) -> bool:
    """Whether data marked ``new`` is older than the deletion (or as old): not to be applied.

    A value that cannot be read counts as not newer; a value the tombstone lacks is not
    compared.
    """
    if new is None:
        return True
    return _not_newer(new.revision, tombstone.revision) and _not_newer(
        new.updated, tombstone.updated
    )


def merge(old: Mark | None, new: Mark | None) -> Mark | None:
    """The tombstone after another DELETE: the later of each value."""
    if old is None or new is None:
        return new or old
    return Mark(_latest(old.revision, new.revision), _latest(old.updated, new.updated))


def lock(model: Any, using: str, pks: Iterable[Any]) -> None:
    """Serialize, per pk, the transactions that apply messages of ``model`` to these rows.

    On PostgreSQL (READ COMMITTED) two workers could otherwise both miss what the other one is
    writing: a DELETE (and its tombstone) next to a create or an update of the same row. A
    transaction-level advisory lock per pk, taken in one statement in a fixed order before the
    rows are read, makes the second one wait and then see the first one's writes. Other
    databases: nothing (SQLite has one writer at a time).
    """
    connection = connections[using]
    if connection.vendor != 'postgresql':
        return
    keys = set()
    for value in pks:
        try:
            keys.add(f'{model.CQRS_ID}:{key(model, value)}')
        except (ValidationError, ValueError, TypeError):
            continue  # the row lookup reports it
    if not keys:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            'SELECT pg_advisory_xact_lock(%s, h) FROM (SELECT DISTINCT hashtext(k) AS h '
            'FROM unnest(%s::text[]) AS k ORDER BY h) AS keys',
            [_LOCK_SPACE, sorted(keys)],
        )


def load(cqrs_id: str, using: str, keys: Iterable[str]) -> dict[str, Mark]:
    """The tombstones of ``keys``: one query (per thousand keys).

    Plain SQL: this runs for every create of a replica row, where building an ORM query would
    cost more than the query itself.
    """
    keys = list(keys)
    found: dict[str, Mark] = {}
    connection = connections[using]
    quote = connection.ops.quote_name
    head = (
        f'SELECT {quote("instance_pk")}, {quote("cqrs_revision")}, {quote("cqrs_updated")} '
        f'FROM {quote(CQRSTombstone._meta.db_table)} WHERE {quote("cqrs_id")} = %s '
        f'AND {quote("instance_pk")} IN '
    )
    with connection.cursor() as cursor:
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            cursor.execute(head + f'({", ".join(["%s"] * len(chunk))})', [cqrs_id, *chunk])
            for instance_pk, revision, updated in cursor.fetchall():
                found[instance_pk] = Mark(revision, _stored_datetime(updated, connection))
    return found


def store(cqrs_id: str, using: str, marks: dict[str, Mark]) -> None:
    """Write (or overwrite) the tombstones ``marks``: one statement where the database can."""
    if not marks:
        return
    now = timezone.now()
    objs = [
        CQRSTombstone(
            cqrs_id=cqrs_id,
            instance_pk=instance_pk,
            cqrs_revision=value.revision,
            cqrs_updated=value.updated,
            created=now,
        )
        for instance_pk, value in marks.items()
    ]
    manager = CQRSTombstone._default_manager.using(using)
    features = connections[using].features
    if features.supports_update_conflicts:
        unique = {'unique_fields': ['cqrs_id', 'instance_pk']}
        manager.bulk_create(
            objs,
            batch_size=_CHUNK,
            update_conflicts=True,
            update_fields=['cqrs_revision', 'cqrs_updated', 'created'],
            **(unique if features.supports_update_conflicts_with_target else {}),
        )
        return
    remove(cqrs_id, using, list(marks))
    manager.bulk_create(objs, batch_size=_CHUNK)


def remove(cqrs_id: str, using: str, keys: list[str]) -> None:
    """Delete the tombstones of ``keys`` (rows the master created again)."""
    manager = CQRSTombstone._default_manager.using(using)
    for start in range(0, len(keys), _CHUNK):
        manager.filter(cqrs_id=cqrs_id, instance_pk__in=keys[start : start + _CHUNK]).delete()


def record_deletions(cqrs_id: str, using: str, marks: dict[str, Mark | None]) -> None:
    """Keep the tombstones of deleted rows, each merged with the one already there."""
    marks = {instance_key: value for instance_key, value in marks.items() if value is not None}
    if not marks:
        return
    old = load(cqrs_id, using, marks)
    store(cqrs_id, using, {k: merge(old.get(k), value) for k, value in marks.items()})


def purge(using: str, ttl: float | None = None) -> int:
    """Delete the tombstones older than ``ttl`` seconds (default: the setting); one query."""
    if ttl is None:
        ttl = cqrs_settings.replica.tombstone_ttl
    if not ttl:
        return 0
    limit = timezone.now() - timedelta(seconds=ttl)
    deleted, _ = CQRSTombstone._default_manager.using(using).filter(created__lt=limit).delete()
    return deleted


def _revision(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _datetime(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            value = parse_datetime(value.strip())
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    aware = timezone.is_aware(value)
    try:
        if settings.USE_TZ and not aware:
            return timezone.make_aware(value, timezone.get_default_timezone())
        if not settings.USE_TZ and aware:
            return timezone.make_naive(value, timezone.get_default_timezone())
    except (ValueError, OverflowError):
        return None
    return value


def _stored_datetime(value: Any, connection: Any) -> datetime | None:
    """A ``cqrs_updated`` as read by the database driver, as the ORM would give it."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is not None and settings.USE_TZ and timezone.is_naive(value):
        value = timezone.make_aware(value, connection.timezone)
    return value


def _not_newer(new: Any, old: Any) -> bool:
    return old is None or new is None or new <= old


def _latest(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return a if b is None else b
    return max(a, b)
