"""``manage.py cqrs_diff_master``: list the pk and revision of master rows, first step of
``cqrs_diff_master | cqrs_diff_replica | cqrs_diff_sync``."""

from __future__ import annotations

from dj_cqrs.management.base import CQRSCommand, json_pk, require_table
from dj_cqrs.mixins import RawMasterMixin
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
        queryset = self.filtered_queryset(
            model, options['filter'], model._default_manager.order_by()
        )
        if model.is_sync_instance is RawMasterMixin.is_sync_instance:
            # Every row is synced: two columns are enough.
            rows = queryset.values_list('pk', 'cqrs_revision')
            self.write_listing(options, NAME, rows, _pairs)
        else:
            # Rows whose is_sync_instance() is False are left out (they are never synced).
            self.write_listing(options, NAME, queryset, _sync_instance_pairs)


def _pairs(rows) -> list:
    return [[json_pk(pk), revision] for pk, revision in rows]


def _sync_instance_pairs(instances) -> list:
    return [[json_pk(obj.pk), obj.cqrs_revision] for obj in instances if obj.is_sync_instance()]
