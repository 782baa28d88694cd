"""The replication status of this service: what ``manage.py cqrs_status`` and the admin status
page show.

On a replica: the messages of its queue and of its dead-letter queue as the broker counts them,
and per CQRS_ID when a message was last applied and the lag (now minus the master's
``cqrs_updated`` of the newest change applied), from the tables the consumer writes once per
batch (``dj_cqrs.replica_status``). Messages a worker holds for a retry (its in-memory delay
queue) are among the queue's unacknowledged messages. On a master: the outbox backlog of each
database and whether the broker answers. A figure the broker cannot give is None (unknown),
never 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError
from django.utils import timezone

from dj_cqrs import metrics
from dj_cqrs.conf import cqrs_settings
from dj_cqrs.registries import MasterRegistry, ReplicaRegistry
from dj_cqrs.replica_status import CQRSLagSample, CQRSReplicaStatus, database
from dj_cqrs.transport import current_transport
from dj_cqrs.transport._queues import BrokerUnreachable, inspect

SIDES = ('replica', 'master', 'both')


@dataclass
class QueueStatus:
    """Messages of one broker queue; None in any field means unknown."""

    name: str
    ready: int | None
    unacknowledged: int | None
    consumers: int | None


@dataclass
class ReplicaModelStatus:
    """Progress of one replica CQRS_ID."""

    cqrs_id: str
    last_applied: datetime | None
    """When this service last applied a message of it (None: never)."""
    last_master_updated: datetime | None
    """The master's ``cqrs_updated`` of the newest change applied (SYNCs do not count)."""
    lag: float | None
    """Seconds: now minus ``last_master_updated`` (None: never)."""


@dataclass
class OutboxStatus:
    """The outbox backlog of one database."""

    database: str
    rows: int
    oldest_age: float | None
    """Seconds since the oldest row was written (None: empty)."""


@dataclass
class Status:
    """Everything ``collect`` found; ``as_dict()`` is the ``cqrs_status --json`` document."""

    side: str
    broker: str
    broker_reachable: bool
    broker_error: str | None
    queues: list[QueueStatus]
    dead_letters: int | None
    models: list[ReplicaModelStatus]
    outbox: list[OutboxStatus]
    database_error: str | None = None
    """Set when a database could not be read: ``<alias>: <reason>``."""
    collected_at: datetime = field(default_factory=timezone.now)

    @property
    def queue(self) -> QueueStatus | None:
        """The replica queue's figures (None on a master)."""
        return next((q for q in self.queues if q.name == cqrs_settings.queue), None)

    def as_dict(self) -> dict:
        """A JSON-ready dict: datetimes in ISO 8601, unknown figures None."""
        return _jsonable(asdict(self))


def service_side() -> str:
    """``'replica'``, ``'master'`` or ``'both'``: which registries have models (a replica needs
    ``settings.CQRS['queue']``)."""
    replica = bool(ReplicaRegistry.models) and bool(cqrs_settings.queue)
    master = bool(MasterRegistry.models)
    if replica and master:
        return 'both'
    return 'replica' if replica else 'master'


def collect(side: str | None = None) -> Status:
    """The status of this service (``side`` None: ``service_side()``).

    Never raises for an unreachable broker or database: ``broker_error`` / ``database_error``
    say what failed and the figures that depend on it are None.
    """
    side = side or service_side()
    if side not in SIDES:
        raise ValueError(f'side must be one of {", ".join(SIDES)}, not {side!r}.')
    replica = side in ('replica', 'both')
    if replica and not cqrs_settings.queue:
        raise ValueError("settings.CQRS['queue'] is not set: this is not a replica service.")
    names = [cqrs_settings.queue, cqrs_settings.replica.dead_letter_queue] if replica else []
    status = Status(side, '', False, None, [], None, [], [])
    try:
        status.broker, figures = inspect(current_transport._resolve(), names)
        status.broker_reachable = True
        status.queues = [QueueStatus(**vars(figure)) for figure in figures]
    except BrokerUnreachable as exc:
        status.broker, status.broker_error = exc.location, exc.reason
        status.queues = [QueueStatus(name, None, None, None) for name in names]
    if replica:
        status.dead_letters = status.queues[1].ready
        status.models = _models(status)
    if side in ('master', 'both'):
        status.outbox = _outbox(status)
    return status


def lag_history(since: timedelta = timedelta(hours=1)) -> dict[str, list[tuple[datetime, float]]]:
    """Per CQRS_ID, (minute, max lag seconds in that minute) samples, oldest first."""
    rows = (
        CQRSLagSample._default_manager.using(database())
        .filter(minute__gte=timezone.now() - since)
        .order_by('cqrs_id', 'minute')
        .values_list('cqrs_id', 'minute', 'max_lag')
    )
    history: dict[str, list[tuple[datetime, float]]] = {}
    for cqrs_id, minute, max_lag in rows:
        history.setdefault(cqrs_id, []).append((minute, max_lag))
    return history


def _models(status: Status) -> list[ReplicaModelStatus]:
    using = database()
    try:
        rows = {
            row.cqrs_id: row
            for row in CQRSReplicaStatus._default_manager.using(using).filter(
                cqrs_id__in=list(ReplicaRegistry.models)
            )
        }
    except DatabaseError as exc:
        status.database_error = f'{using}: {_first_line(exc)}'
        rows = {}
    now = timezone.now()
    found = []
    for cqrs_id in sorted(ReplicaRegistry.models):
        row = rows.get(cqrs_id)
        updated = row.last_master_updated if row else None
        found.append(
            ReplicaModelStatus(
                cqrs_id,
                row.last_applied if row else None,
                updated,
                None if updated is None else max((now - updated).total_seconds(), 0.0),
            )
        )
    return found


def _outbox(status: Status) -> list[OutboxStatus]:
    def on_error(alias: str, exc: Exception) -> None:
        status.database_error = status.database_error or f'{alias}: {_first_line(exc)}'

    return [
        OutboxStatus(alias, rows, None if age is None else max(age, 0.0))
        for alias, rows, age in metrics.outbox_backlog(on_error)
    ]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value
