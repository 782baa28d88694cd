"""``manage.py cqrs_bulk_load``: apply a dump file to a replica table."""

from __future__ import annotations

import os
import sys
from itertools import islice

import ujson
from django.core.management.base import CommandError
from django.db import DatabaseError, router, transaction

from dj_cqrs.management.base import CQRSCommand, plain_writer
from dj_cqrs.registries import ReplicaRegistry

FALSE_VALUES = frozenset({'', '0', 'false', 'f', 'no', 'n', 'off'})


def clear_flag(value: str) -> bool:
    """``--clear`` alone, or ``--clear=<value>``: true unless the value says false."""
    return value.strip().lower() not in FALSE_VALUES


class Command(CQRSCommand):
    help = 'Apply a cqrs_bulk_dump file to the replica table, keeping the revision rules.'
    registry = ReplicaRegistry

    def add_arguments(self, parser):
        parser.add_argument('--input', '-i', required=True, help='Dump file, or - for stdin.')
        parser.add_argument(
            '--clear',
            '-c',
            nargs='?',
            type=clear_flag,
            const=True,
            default=False,
            help='Delete every replica row first (--clear, or --clear=<true|false>).',
        )
        self.add_batch_argument(parser)
        self.add_progress_argument(parser)

    def handle(self, *args, **options):
        batch_size = self.batch_size(options)
        name = options['input']
        if name != '-' and not os.path.exists(name):
            raise CommandError(f"File {name} doesn't exist!")
        stream = self._open(name)
        try:
            cqrs_id = stream.readline().strip()
            if not cqrs_id:
                raise CommandError(f'File {name} is empty!')
            model = self.get_model(cqrs_id)
            if options['clear']:
                self._clear(model)
            loaded = self._load(model, stream, batch_size, options['progress'])
        finally:
            if stream is not sys.stdin:
                stream.close()
        plain_writer(self.stderr)(f'Done!\n{loaded} instance(s) loaded.\n')

    def _open(self, path: str):
        if path == '-':
            return sys.stdin
        try:
            return open(path, encoding='utf-8')
        except OSError as exc:
            raise CommandError(f'Cannot read {path}: {exc.strerror}.') from exc

    def _clear(self, model) -> None:
        if not hasattr(model, '_default_manager'):
            raise CommandError(f'{model.CQRS_ID} has no table to clear (not a Django model).')
        using = router.db_for_write(model)
        try:
            with transaction.atomic(using=using):
                model._default_manager.using(using).all().delete()
        except DatabaseError as exc:
            raise CommandError('Delete operation fails!') from exc

    def _load(self, model, stream, batch_size: int, progress: bool) -> int:
        """Apply the rows ``batch_size`` lines at a time; return how many were applied."""
        err = plain_writer(self.stderr)
        using = router.db_for_write(model) if hasattr(model, '_default_manager') else None
        numbered = enumerate(stream, start=2)
        loaded = 0
        with self.tty_progress(progress) as bar:
            while batch := list(islice(numbered, batch_size)):
                messages: dict[int, str] = {}
                rows: list[tuple[int, dict]] = []
                for number, line in batch:
                    try:
                        data = ujson.loads(line.strip())
                    except ValueError:
                        messages[number] = f"Dump file can't be parsed: line {number}!"
                        continue
                    if isinstance(data, dict):
                        rows.append((number, data))
                    else:
                        messages[number] = f"Instance can't be saved: line {number}!"
                for number, result in _apply(model, rows, using):
                    if isinstance(result, Exception):
                        messages[number] = f'Unexpected error: line {number}! {result}'
                    elif result:
                        loaded += 1
                    else:
                        messages[number] = f"Instance can't be saved: line {number}!"
                for number in sorted(messages):
                    err(messages[number] + '\n')
                bar.update(len(batch))
        return loaded


def _apply(model, rows: list[tuple[int, dict]], using: str | None) -> list[tuple[int, object]]:
    """``(line number, result of cqrs_save or the exception it raised)`` for every row.

    The rows are applied together in one transaction; when one raises, the batch is rolled
    back and applied again row by row, each in a savepoint, so only that row is lost.
    """
    from dj_cqrs.managers import ReplicaManager

    if not rows:
        return []
    numbers = [number for number, _ in rows]
    data = [row for _, row in rows]
    manager = getattr(model, 'cqrs', None)
    try:
        with transaction.atomic(using=using):
            if isinstance(manager, ReplicaManager):
                results = manager.bulk_save_instances(data)
            else:
                results = [model.cqrs_save(row) for row in data]
        return list(zip(numbers, results, strict=True))
    except Exception:
        pass
    outcome: list[tuple[int, object]] = []
    for number, row in rows:
        try:
            with transaction.atomic(using=using):
                outcome.append((number, model.cqrs_save(row)))
        except Exception as exc:
            outcome.append((number, exc))
    return outcome
