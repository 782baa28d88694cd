"""``manage.py cqrs_bulk_load``: apply a dump file to a replica table."""

from __future__ import annotations

import sys

import ujson
from django.core.management.base import CommandError
from django.db import router, transaction

from dj_cqrs.management.base import CQRSCommand
from dj_cqrs.registries import ReplicaRegistry


class Command(CQRSCommand):
    help = 'Apply a cqrs_bulk_dump file to the replica table, keeping the revision rules.'
    registry = ReplicaRegistry
    default_batch_size = 10000

    def add_arguments(self, parser):
        parser.add_argument('--input', '-i', required=True, help='Dump file, or - for stdin.')
        parser.add_argument(
            '--clear', '-c', action='store_true', help='Delete every replica row first.'
        )
        self.add_batch_argument(parser)
        self.add_progress_argument(parser)

    def handle(self, *args, **options):
        batch_size = self.batch_size(options)
        stream = self._open(options['input'])
        try:
            first = stream.readline()
            if not first.strip():
                raise CommandError(f'{options["input"]} is empty: no CQRS_ID on the first line.')
            model = self.get_model(first.strip())
            if options['clear'] and not hasattr(model, '_default_manager'):
                raise CommandError(f'{model.CQRS_ID} has no table to clear (not a Django model).')
            loaded, skipped = self._load(model, stream, batch_size, options)
        finally:
            if stream is not sys.stdin:
                stream.close()
        self.stderr.write(f'Loaded {loaded} {model.CQRS_ID} rows, skipped {skipped}.')

    def _open(self, path: str):
        if path == '-':
            return sys.stdin
        try:
            return open(path, encoding='utf-8')
        except OSError as exc:
            raise CommandError(f'Cannot read {path}: {exc.strerror}.') from exc

    def _load(self, model, stream, batch_size: int, options: dict) -> tuple[int, int]:
        using = router.db_for_write(model)
        loaded = skipped = 0
        cleared = not options['clear']
        with self.progress(None, options['progress']) as bar:
            number = 1
            while True:
                batch: list[tuple[int, dict]] = []
                for line in stream:
                    number += 1
                    if not line.strip():
                        continue
                    data = self._parse(line, number)
                    if data is None:
                        skipped += 1
                        continue
                    batch.append((number, data))
                    if len(batch) >= batch_size:
                        break
                if not batch and cleared:
                    break
                with transaction.atomic(using=using):
                    if not cleared:
                        model._default_manager.using(using).all().delete()
                        cleared = True
                    results = _apply(model, [data for _, data in batch])
                for (line_number, _), result in zip(batch, results, strict=True):
                    if result:
                        loaded += 1
                    else:
                        skipped += 1
                        self.stderr.write(f'Line {line_number}: not applied (see the log).')
                bar.update(len(batch))
                if not batch:
                    break
        return loaded, skipped

    def _parse(self, line: str, number: int) -> dict | None:
        try:
            data = ujson.loads(line)
        except ValueError as exc:
            self.stderr.write(f'Line {number}: not valid JSON ({exc}); skipped.')
            return None
        if not isinstance(data, dict):
            self.stderr.write(f'Line {number}: not a JSON object; skipped.')
            return None
        return data


def _apply(model, rows: list[dict]) -> list:
    from dj_cqrs.managers import ReplicaManager

    manager = getattr(model, 'cqrs', None)
    if isinstance(manager, ReplicaManager):
        return manager.bulk_save_instances(rows)
    return [model.cqrs_save(row) for row in rows]
