"""``manage.py cqrs_deleted_diff_replica``: list the pks of replica rows, first step of
``cqrs_deleted_diff_replica | cqrs_deleted_diff_master | cqrs_deleted_sync_replica``."""

from __future__ import annotations

from dj_cqrs.management.base import (
    CQRSCommand,
    json_pk,
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
        self.write_listing(
            options,
            NAME,
            ('pk',),
            lambda batch: [json_pk(pk) for (pk,) in batch],
        )
