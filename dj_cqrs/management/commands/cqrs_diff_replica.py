"""``manage.py cqrs_diff_replica``: compare the output of ``cqrs_diff_master`` with the
replica table and print the pks to synchronize, for ``cqrs_diff_sync``."""

from __future__ import annotations

from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import NO_QUEUE
from dj_cqrs.management.base import (
    CQRSCommand,
    dump_line,
    input_stream,
    iter_json_lines,
    json_pk,
    parse_revision_list,
    write_line,
)
from dj_cqrs.registries import ReplicaRegistry

NAME = 'cqrs_diff_replica'


class Command(CQRSCommand):
    help = (
        'Read the output of cqrs_diff_master on stdin; print "<CQRS_ID>,<now>,<queue>", then '
        'JSON lists of the pks missing on this replica or at another revision. '
        'Pipe it into cqrs_diff_sync on the master.'
    )
    registry = ReplicaRegistry
    stealth_options = ('stdin',)

    def handle(self, *args, **options):
        stream = input_stream(options)
        model, header = self.read_diff_header(stream, 2, NAME)
        cqrs_id, now = header
        queue = cqrs_settings.queue or NO_QUEUE
        write_line(self, f'{cqrs_id},{now},{queue}')

        # The base manager: a row a custom default manager hides still exists in the table.
        manager = model._base_manager
        for number, value in iter_json_lines(stream, NAME):
            master = parse_revision_list(model, value, NAME, number)
            if not master:
                continue
            replica = dict(
                manager.filter(pk__in=list(master)).order_by().values_list('pk', 'cqrs_revision')
            )
            # A set, built as django-cqrs builds it: the same order on stdout, the same text
            # on stderr.
            diff = set()
            for pk, revision in master.items():
                if replica.get(pk) != revision:
                    diff.add(json_pk(pk))
            if diff:
                write_line(self, dump_line(list(diff)))
                self.stderr.write(f'PK to resync: {diff}')
