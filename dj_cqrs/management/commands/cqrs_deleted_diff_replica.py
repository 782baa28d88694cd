"""``manage.py cqrs_deleted_diff_replica``: list the pks of replica rows, first step of
``cqrs_deleted_diff_replica | cqrs_deleted_diff_master | cqrs_deleted_sync_replica``."""

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
from dj_cqrs.registries import ReplicaRegistry

NAME = 'cqrs_deleted_diff_replica'


class Command(CQRSCommand):
    help = (
        'Print "<CQRS_ID>,<now>", then one JSON list of replica pks per batch. '
        'Pipe it into cqrs_deleted_diff_master on the master.'
    )
    registry = ReplicaRegistry

    def add_arguments(self, parser):
        self.add_cqrs_id_argument(parser)
        self.add_filter_argument(parser)
        self.add_batch_argument(parser)

    def handle(self, *args, **options):
        model = self.get_model(options['cqrs_id'])
        require_table(model, NAME)
        queryset = self.filtered_queryset(model, options['filter'])
        batch_size = self.batch_size(options)

        # Taken before the first read: cqrs_deleted_sync_replica keeps rows updated after it.
        header = f'{model.CQRS_ID},{now_header()}'
        batches = iter_value_batches(queryset, ('pk',), batch_size)
        try:
            first = next(batches, None)
        except DatabaseError as exc:
            raise CommandError(f'{NAME}: {str(exc).splitlines()[0]}') from exc

        write_line(self, header)
        if first is None:
            return
        for batch in chain([first], batches):
            write_line(self, dump_line([json_pk(pk) for (pk,) in batch]))
