"""``manage.py cqrs_deleted_diff_master``: keep, of the pks printed by
``cqrs_deleted_diff_replica``, those that no longer exist on the master."""

from __future__ import annotations

from dj_cqrs.management.base import (
    CQRSCommand,
    dump_line,
    input_stream,
    iter_json_lines,
    json_pk,
    parse_pk_list,
    write_line,
)
from dj_cqrs.registries import MasterRegistry

NAME = 'cqrs_deleted_diff_master'


class Command(CQRSCommand):
    help = (
        'Read the output of cqrs_deleted_diff_replica on stdin; print its header, then JSON '
        'lists of the pks that do not exist on the master. '
        'Pipe it into cqrs_deleted_sync_replica on the replica.'
    )
    registry = MasterRegistry
    stealth_options = ('stdin',)

    def handle(self, *args, **options):
        stream = input_stream(options)
        model, header = self.read_diff_header(stream, 2, NAME)
        cqrs_id, now = header
        write_line(self, f'{cqrs_id},{now}')

        # The base manager: a row a custom default manager hides is not deleted.
        manager = model._base_manager
        for number, value in iter_json_lines(stream, NAME):
            pks = parse_pk_list(model, value, NAME, number)
            if not pks:
                continue
            existing = manager.filter(pk__in=pks).order_by().values_list('pk', flat=True)
            # Set arithmetic as in django-cqrs: the same order on stdout and text on stderr.
            missing = list({json_pk(pk) for pk in pks} - {json_pk(pk) for pk in existing})
            if missing:
                write_line(self, dump_line(missing))
                self.stderr.write(f'PK to delete: {missing}')
