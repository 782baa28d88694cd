"""``manage.py cqrs_diff_sync``: publish a SYNC for every pk printed by
``cqrs_diff_replica``, to the queue of that replica."""

from __future__ import annotations

from django.core.management.base import CommandError

from dj_cqrs.constants import NO_QUEUE
from dj_cqrs.management.base import (
    CQRSCommand,
    input_stream,
    iter_json_lines,
    parse_pk_list,
    read_diff_header,
    require_table,
)
from dj_cqrs.management.commands.cqrs_sync import sync_rows
from dj_cqrs.registries import MasterRegistry

NAME = 'cqrs_diff_sync'


class Command(CQRSCommand):
    help = (
        'Read the output of cqrs_diff_replica on stdin and publish a SYNC of those master rows '
        'to the queue named in its header ("None": to every replica).'
    )
    registry = MasterRegistry
    stealth_options = ('stdin',)

    def add_arguments(self, parser):
        self.add_batch_argument(parser)
        self.add_progress_argument(parser)

    def handle(self, *args, **options):
        batch_size = self.batch_size(options)
        stream = input_stream(options)
        cqrs_id, _now, queue = read_diff_header(stream, 3, NAME)
        queue = queue.strip()
        if not queue:
            raise CommandError(f'{NAME}: no queue in the header line.')
        model = self.get_model(cqrs_id)
        require_table(model, NAME)
        if not model.CQRS_PRODUCE:
            raise CommandError(f'{model.CQRS_ID} does not produce (CQRS_PRODUCE = False).')
        if queue == NO_QUEUE:
            queue = None

        synced = 0
        # The input is a stream: its length, hence the total, is unknown until its end.
        with self.progress(None, options['progress'], unit='pks') as bar:
            for number, value in iter_json_lines(stream, NAME):
                pks = parse_pk_list(model, value, NAME, number)
                if not pks:
                    continue
                queryset = model._default_manager.filter(pk__in=pks)
                synced += sync_rows(model, queryset, batch_size, queue, False, self)
                bar.update(len(pks))
        target = f'queue {queue}' if queue else 'every replica'
        self.stderr.write(f'Published {synced} SYNC messages for {model.CQRS_ID} to {target}.')
