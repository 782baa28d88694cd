"""``manage.py cqrs_sync``: publish SYNC messages for the master rows matching a filter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import CommandError
from django.db import close_old_connections, connections

from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import NO_QUEUE, SignalType
from dj_cqrs.controller import producer
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.management.base import CQRSCommand, ProgressLine, plain_writer
from dj_cqrs.management.utils import batch_qs
from dj_cqrs.mixins import RawMasterMixin
from dj_cqrs.signals import is_published
from dj_cqrs.utils import get_message_expiration_dt

DEFAULT_BATCH = 10000
DEFAULT_PROGRESS = False
# SYNCs handed to the transport at once: the broker works on a chunk while the next is built.
_PUBLISH_CHUNK = 1000


class Command(CQRSCommand):
    help = 'Publish a SYNC for every master row matching the filter (to every replica or one).'
    default_batch_size = DEFAULT_BATCH

    def add_arguments(self, parser):
        self.add_cqrs_id_argument(parser)
        self.add_filter_argument(parser)
        parser.add_argument('--queue', '-q', default=None, help='Send only to this replica queue.')
        self.add_batch_argument(parser)
        self.add_progress_argument(parser)

    def handle(self, *args, **options):
        model = self.get_model(options['cqrs_id'])
        # Without a filter nothing is synced, as in django-cqrs: '{}' selects every row.
        queryset = model._default_manager.none()
        if options.get('filter'):
            queryset = self.filtered_queryset(model, options['filter'])
        queue = options.get('queue')
        if queue == NO_QUEUE:
            queue = None
        sync_rows(
            self,
            model,
            queryset,
            self.batch_size(options),
            queue,
            bool(options.get('progress', DEFAULT_PROGRESS)),
        )


def sync_rows(command, model, queryset, batch_size: int, queue: str | None, progress: bool):
    """Publish a SYNC of every row of ``queryset``, ``batch_size`` rows per query, and print
    what django-cqrs prints on stdout (``Done!``, the counts, ``--progress`` lines).

    Every row goes through ``instance.cqrs_sync(queue=...)`` when the model overrides it; the
    default one is done in place, without reading the row again (it was just read). When
    nothing but the row's values goes into its SYNC (see ``_row_payloads``), rows are read
    with ``values_list()`` and each batch is handed to the transport at once.
    """
    write = plain_writer(command.stdout)
    total = queryset.count()
    if not total:
        write('No objects found for filter!\n')
        return
    line = ProgressLine(write, total, progress)
    line.begin(batch_size)
    processed = synced = 0
    queryset = model.relate_cqrs_serialization(queryset)
    to_payload = _row_payloads(model, queue)
    if to_payload is None:
        pages = batch_qs(queryset, batch_size)
        sync_page = _instance_sync(model, queue, write)
    else:
        pages = batch_qs(queryset.values_list(*to_payload.columns), batch_size)
        sync_page = _bulk_sync(model, to_payload, write)
    for page in pages:
        line.batch_started(processed)
        connection = connections[page.db]
        if _unusable(connection):
            connection.close()  # the next query opens a new one
        count, done = sync_page(page, connection)
        processed += count
        synced += done
        line.batch_done(processed)
    if not producer.flush():
        raise CommandError('The broker did not confirm every message; run the command again.')
    write(f'Done!\n{synced} instance(s) synced.\n{processed} instance(s) processed.\n')


def _failed(write, pk: Any, exc: Exception) -> None:
    write(f'\nSync record failed for pk={pk}: {type(exc).__name__}: {exc}\n')


def _instance_sync(model: type, queue: str | None, write) -> Callable:
    """Sync a page of instances one by one; ``(rows, synced rows)``."""
    sync = _row_sync(model, queue)

    def sync_page(page, connection) -> tuple[int, int]:
        processed = synced = 0
        for instance in page:
            processed += 1
            try:
                sync(instance)
                synced += 1
            except Exception as exc:
                _failed(write, instance.pk, exc)
                if not connection.in_atomic_block:
                    close_old_connections()
        return processed, synced

    return sync_page


def _bulk_sync(model: type, to_payload: _RowPayloads, write) -> Callable:
    """Build the SYNCs of a page of rows and hand them to the transport together."""
    publishes = bool(model.CQRS_PRODUCE)

    def sync_page(page, connection) -> tuple[int, int]:
        processed = synced = 0
        payloads = []
        for row in page:
            processed += 1
            try:
                payloads.append(to_payload(row))
            except Exception as exc:
                _failed(write, row[-1], exc)
            if len(payloads) == _PUBLISH_CHUNK:
                synced += hand_over(payloads)
                payloads = []
        return processed, synced + hand_over(payloads)

    def hand_over(payloads: list[TransportPayload]) -> int:
        if not publishes or not payloads:
            return len(payloads)
        try:
            producer.produce_many(payloads)
        except Exception:
            # One of them cannot be sent: one at a time, to report it as the row it is.
            return _produce_each(payloads, write)
        return len(payloads)

    return sync_page


def _produce_each(payloads: list[TransportPayload], write) -> int:
    synced = 0
    for payload in payloads:
        try:
            producer.produce(payload)
            synced += 1
        except Exception as exc:
            _failed(write, payload.pk, exc)
    return synced


class _RowPayloads:
    """The SYNC of a row read with ``values_list(*columns)`` (the pk is the last column)."""

    def __init__(self, model: type, queue: str | None, columns: list[str], serialize) -> None:
        self.columns = columns
        self._cqrs_id = model.CQRS_ID
        self._queue = queue
        self._serialize = serialize

    def __call__(self, row: tuple) -> TransportPayload:
        return TransportPayload(
            SignalType.SYNC,
            self._cqrs_id,
            self._serialize(row),
            row[-1],
            queue=self._queue,
            previous_data=None,
            expires=get_message_expiration_dt(),
            meta={},
        )


# What the default cqrs_sync() reads from an instance besides its serialization: when a model
# keeps all of these (and has no meta_function), its SYNC depends on the row's values only.
_SYNC_HOOKS = ('cqrs_sync', 'is_sync_instance', 'get_cqrs_meta', 'get_tracked_fields_data')


def _row_payloads(model: type, queue: str | None) -> _RowPayloads | None:
    """How to build SYNCs from rows without instances, or None when instances are needed."""
    if cqrs_settings.master.meta_function is not None:
        return None
    if any(getattr(model, name) is not getattr(RawMasterMixin, name) for name in _SYNC_HOOKS):
        return None
    fast = model._cqrs_row_serialization()
    if fast is None:
        return None
    return _RowPayloads(model, queue, *fast)


def _unusable(connection) -> bool:
    """Whether ``connection`` is open but broken (the server closed it during a long batch);
    never inside a transaction, whose connection must not be replaced."""
    return (
        connection.connection is not None
        and not connection.in_atomic_block
        and not connection.is_usable()
    )


def _row_sync(model: type, queue: str | None) -> Callable[[Any], Any]:
    """How one row is synced: the model's own ``cqrs_sync`` if it has one, else a SYNC built
    from the row as read (what the default ``cqrs_sync`` sends, without its re-read)."""
    if model.cqrs_sync is not RawMasterMixin.cqrs_sync:
        return lambda instance: instance.cqrs_sync(queue=queue)

    def publish(instance: Any) -> None:
        if is_published(instance):
            producer.produce(
                producer.build_save_payload(
                    model, instance, instance._state.db, sync=True, queue=queue
                )
            )

    return publish
