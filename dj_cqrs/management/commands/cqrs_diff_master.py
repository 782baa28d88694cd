"""``manage.py cqrs_diff_master``: list the pk and revision of master rows, first step of
``cqrs_diff_master | cqrs_diff_replica | cqrs_diff_sync``."""

from __future__ import annotations

from dj_cqrs.management.base import (
    CQRSCommand,
    json_pk,
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
        self.write_listing(
            options,
            NAME,
            ('pk', 'cqrs_revision'),
            lambda batch: [[json_pk(pk), revision] for pk, revision in batch],
        )
