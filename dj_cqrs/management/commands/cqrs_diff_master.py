"""``manage.py cqrs_diff_master``: list the pk and revision of master rows, first step of
``cqrs_diff_master | cqrs_diff_replica | cqrs_diff_sync``."""

from __future__ import annotations

from itertools import chain

from django.core.management.base import CommandError
from django.db import DatabaseError

from dj_cqrs.management.base import (
    CQRSCommand,
    dump_line,
    iter_value_batches,
    json_pk,
    now_header,
    require_table,
    write_line,
)
from dj_cqrs.registries import MasterRegistry

NAME = 'cqrs_diff_master'


class Command(CQRSCommand):
    help = (
        'Print "<CQRS_ID>,<now>", then one JSON line [[pk, revision], ...] per batch of master '
        'rows. Pipe it into cqrs_diff_replica.'
    )
    registry = MasterRegistry

    def add_arguments(self, parser):
        self.add_cqrs_id_argument(parser)
        self.add_filter_argument(parser)
        self.add_batch_argument(parser)

    def handle(self, *args, **options):
        model = self.get_model(options['cqrs_id'])
        require_table(model, NAME)
        queryset = self.filtered_queryset(model, options['filter'])
        batch_size = self.batch_size(options)

        # The time is taken before the first read: rows changed later get a newer revision.
        header = f'{model.CQRS_ID},{now_header()}'
        batches = iter_value_batches(queryset, ('pk', 'cqrs_revision'), batch_size)
        try:
            first = next(batches, None)
        except DatabaseError as exc:
            raise CommandError(f'{NAME}: {str(exc).splitlines()[0]}') from exc

        write_line(self, header)
        if first is None:
            return
        for batch in chain([first], batches):
            write_line(self, dump_line([[json_pk(pk), revision] for pk, revision in batch]))
