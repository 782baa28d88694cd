"""``manage.py cqrs_bulk_dump``: write a master table to a dump file, one JSON row per line."""

from __future__ import annotations

import os
import tempfile

import ujson
from django.core.management.base import CommandError

from dj_cqrs.management.base import CQRSCommand, ProgressLine, plain_writer
from dj_cqrs.management.utils import batch_qs


class Command(CQRSCommand):
    help = (
        'Dump a master table: the CQRS_ID on the first line, then one JSON row per line '
        '(no newline after the last one).'
    )

    def add_arguments(self, parser):
        self.add_cqrs_id_argument(parser, short='-c')
        parser.add_argument(
            '--output', '-o', default=None, help='File to write, or - for stdout (<ID>.dump).'
        )
        self.add_batch_argument(parser)
        self.add_progress_argument(parser)
        parser.add_argument('--force', '-f', action='store_true', help='Override output file.')

    def handle(self, *args, **options):
        model = self.get_model(options['cqrs_id'])
        batch_size = self.batch_size(options)
        output = options['output'] or f'{options["cqrs_id"]}.dump'
        if output == '-':
            self._dump(model, plain_writer(self.stdout), batch_size, options['progress'])
            return
        if os.path.exists(output) and not options['force']:
            raise CommandError(f'File {output} exists!')
        directory = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(directory):
            raise CommandError(f'Cannot write {output}: {directory} is not a directory.')
        # Written next to the target and renamed at the end: never a half-written dump.
        handle, temporary = tempfile.mkstemp(prefix='.cqrs-dump-', dir=directory)
        try:
            with os.fdopen(handle, 'w', encoding='utf-8') as stream:
                self._dump(model, stream.write, batch_size, options['progress'])
            os.replace(temporary, output)
        except BaseException:
            os.unlink(temporary)
            raise

    def _dump(self, model, write, batch_size: int, progress: bool) -> None:
        err = plain_writer(self.stderr)
        queryset = model.relate_cqrs_serialization(model._default_manager.order_by())
        total = model._default_manager.count()
        line = ProgressLine(err, total, progress)
        line.begin(batch_size)
        write(model.CQRS_ID)
        processed = saved = 0
        pages, serialize, pk_of = _dump_reader(model, queryset, batch_size)
        dumps = ujson.dumps
        for page in pages:
            line.batch_started(processed)
            lines = []
            for item in page:
                processed += 1
                try:
                    lines.append(dumps(serialize(item)))
                except Exception as exc:
                    err(f'\nDump record failed for pk={pk_of(item)}: {type(exc).__name__}: {exc}\n')
            if lines:
                write('\n' + '\n'.join(lines))
            saved += len(lines)
            line.batch_done(processed)
        err(f'Done!\n{saved} instance(s) saved.\n{processed} instance(s) processed.\n')


def _dump_reader(model, queryset, batch_size: int):
    """The pages of ``queryset`` and how to serialize and name one of their items.

    Rows are read with ``values_list()`` and serialized without instances when the model's
    serialization allows it (same dict as ``to_cqrs_dict``); otherwise instances are read
    (with ``relate_cqrs_serialization``) and serialized by ``to_cqrs_dict``.
    """
    fast = model._cqrs_row_serialization()
    if fast is None:
        using = queryset.db
        return (
            batch_qs(queryset, batch_size),
            lambda instance: instance.to_cqrs_dict(using, sync=True),
            lambda instance: instance.pk,
        )
    columns, serialize = fast
    return batch_qs(queryset.values_list(*columns), batch_size), serialize, _last_column


def _last_column(row: tuple):
    return row[-1]
