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
)
from dj_cqrs.management.commands.cqrs_sync import DEFAULT_BATCH, DEFAULT_PROGRESS, sync_rows
from dj_cqrs.registries import MasterRegistry

NAME = 'cqrs_diff_sync'


class Command(CQRSCommand):
    help = (
        'Read the output of cqrs_diff_replica on stdin and publish a SYNC of those master rows '
        'to the queue named in its header ("None": to every replica).'
    )
    registry = MasterRegistry
    default_batch_size = DEFAULT_BATCH
    stealth_options = ('stdin',)

    def add_arguments(self, parser):
        self.add_batch_argument(parser)
        self.add_progress_argument(parser)

    def handle(self, *args, **options):
        batch_size = self.batch_size(options)
        progress = bool(options.get('progress', DEFAULT_PROGRESS))
        stream = input_stream(options)
        model, header = self.read_diff_header(stream, 3, NAME)
        cqrs_id, _now, queue = header
        queue = queue.strip()
        if not queue:
            raise CommandError(f'{NAME}: no queue in the header line.')
        if queue == NO_QUEUE:
            queue = None

        # As in django-cqrs: one cqrs_sync run (and its output) per line of pks.
        for number, value in iter_json_lines(stream, NAME):
            pks = parse_pk_list(model, value, NAME, number)
            queryset = model._default_manager.filter(pk__in=pks)
            sync_rows(self, model, queryset, batch_size, queue, progress)
