"""``manage.py cqrs_bulk_dump``: write a master table to a dump file, one JSON row per line."""

from __future__ import annotations

import os
import sys
import tempfile

import ujson
from django.core.management.base import CommandError

from dj_cqrs.management.base import CQRSCommand, iter_batches


class Command(CQRSCommand):
    help = 'Dump a master table: the CQRS_ID on the first line, then one JSON row per line.'

    def add_arguments(self, parser):
        self.add_cqrs_id_argument(parser)
        parser.add_argument(
            '--output', '-o', default=None, help='File to write, or - for stdout (<ID>.dump).'
        )
        self.add_batch_argument(parser)
        self.add_progress_argument(parser)
        parser.add_argument(
            '--force', '-f', action='store_true', help='Overwrite an existing file.'
        )

    def handle(self, *args, **options):
        model = self.get_model(options['cqrs_id'])
        batch_size = self.batch_size(options)
        output = options['output'] or f'{model.CQRS_ID}.dump'
        if output == '-':
            self._dump(model, sys.stdout, batch_size, options['progress'])
            return
        if os.path.exists(output) and not options['force']:
            raise CommandError(f'{output} exists; use -f to overwrite it.')
        directory = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(directory):
            raise CommandError(f'Cannot write {output}: {directory} is not a directory.')
        handle, temporary = tempfile.mkstemp(prefix='.cqrs-dump-', dir=directory)
        try:
            with os.fdopen(handle, 'w', encoding='utf-8') as stream:
                count = self._dump(model, stream, batch_size, options['progress'])
            os.replace(temporary, output)
        except BaseException:
            os.unlink(temporary)
            raise
        self.stderr.write(f'Dumped {count} {model.CQRS_ID} rows to {output}.')

    def _dump(self, model, stream, batch_size: int, progress: bool) -> int:
        queryset = model.relate_cqrs_serialization(model._default_manager.all())
        using = queryset.db
        stream.write(f'{model.CQRS_ID}\n')
        count = 0
        with self.progress(queryset.count(), progress) as bar:
            for batch in iter_batches(queryset, batch_size):
                lines = [
                    ujson.dumps(
                        obj.to_cqrs_dict(using, sync=True),
                        ensure_ascii=False,
                        escape_forward_slashes=False,
                    )
                    for obj in batch
                ]
                stream.write('\n'.join(lines))
                stream.write('\n')
                count += len(batch)
                bar.update(len(batch))
        stream.flush()
        return count
