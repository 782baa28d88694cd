"""``manage.py cqrs_deleted_diff_replica``: list the pks of replica rows, first step of
``cqrs_deleted_diff_replica | cqrs_deleted_diff_master | cqrs_deleted_sync_replica``."""

from __future__ import annotations

from dj_cqrs.management.base import CQRSCommand, json_pk, require_table
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
        queryset = self.filtered_queryset(
            model, options['filter'], model._default_manager.order_by()
        )
        self.write_listing(
            options,
            NAME,
            queryset.values_list('pk', flat=True),
            lambda pks: [json_pk(pk) for pk in pks],
        )
