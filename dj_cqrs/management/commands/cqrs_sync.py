"""``manage.py cqrs_sync``: publish SYNC messages for the master rows matching a filter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import CommandError
from django.db import close_old_connections, connections

from dj_cqrs.constants import NO_QUEUE
from dj_cqrs.controller import producer
from dj_cqrs.management.base import CQRSCommand, ProgressLine, plain_writer
from dj_cqrs.management.utils import batch_qs
from dj_cqrs.mixins import RawMasterMixin
from dj_cqrs.signals import is_published

DEFAULT_BATCH = 10000
DEFAULT_PROGRESS = False


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
    default one is done in place, without reading the row again (it was just read).
    """
    write = plain_writer(command.stdout)
    total = queryset.count()
    if not total:
        write('No objects found for filter!\n')
        return
    sync = _row_sync(model, queue)
    line = ProgressLine(write, total, progress)
    line.begin(batch_size)
    processed = synced = 0
    for page in batch_qs(model.relate_cqrs_serialization(queryset), batch_size):
        line.batch_started(processed)
        connection = connections[page.db]
        if _unusable(connection):
            connection.close()  # the next query opens a new one
        for instance in page:
            processed += 1
            try:
                sync(instance)
                synced += 1
            except Exception as exc:
                write(f'\nSync record failed for pk={instance.pk}: {type(exc).__name__}: {exc}\n')
                if not connection.in_atomic_block:
                    close_old_connections()
        line.batch_done(processed)
    if not producer.flush():
        raise CommandError('The broker did not confirm every message; run the command again.')
    write(f'Done!\n{synced} instance(s) synced.\n{processed} instance(s) processed.\n')


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
