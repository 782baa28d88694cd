"""``manage.py cqrs_sync``: publish SYNC messages for the master rows matching a filter."""

from __future__ import annotations

from django.core.management.base import CommandError

from dj_cqrs.constants import NO_QUEUE
from dj_cqrs.management.base import CQRSCommand, iter_batches
from dj_cqrs.signals import publish_sync
from dj_cqrs.transport import current_transport


class Command(CQRSCommand):
    help = 'Publish a SYNC for every master row matching the filter (to every replica or one).'

    def add_arguments(self, parser):
        self.add_cqrs_id_argument(parser)
        self.add_filter_argument(parser, required=True)
        parser.add_argument('--queue', '-q', default=None, help='Send only to this replica queue.')
        self.add_batch_argument(parser)
        self.add_progress_argument(parser)

    def handle(self, *args, **options):
        model = self.get_model(options['cqrs_id'])
        if not model.CQRS_PRODUCE:
            raise CommandError(f'{model.CQRS_ID} does not produce (CQRS_PRODUCE = False).')
        queue = options['queue']
        if queue == NO_QUEUE:
            queue = None
        queryset = self.filtered_queryset(model, options['filter'])
        batch_size = self.batch_size(options)
        synced = sync_rows(model, queryset, batch_size, queue, options['progress'], self)
        self.stderr.write(f'Published {synced} SYNC messages for {model.CQRS_ID}.')


def sync_rows(model, queryset, batch_size, queue, progress, command) -> int:
    """Publish a SYNC for every row of ``queryset``, reading ``batch_size`` rows per query."""
    queryset = model.relate_cqrs_serialization(queryset)
    synced = 0
    with command.progress(queryset.count(), progress) as bar:
        for batch in iter_batches(queryset, batch_size):
            for instance in batch:
                if publish_sync(instance, queryset.db, queue):
                    synced += 1
            bar.update(len(batch))
    flush = getattr(current_transport, 'flush', None)
    if flush is not None and not flush():
        raise CommandError('The broker did not confirm every message; run the command again.')
    return synced
