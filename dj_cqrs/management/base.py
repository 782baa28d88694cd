"""What the ``cqrs_*`` management commands share: options, CQRS_ID lookup, filters, batches,
progress bars and the header lines of piped streams."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from itertools import chain
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import FieldError, ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.db.models import Model, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from tqdm import tqdm

from dj_cqrs.registries import MasterRegistry, RegistryMixin, ReplicaRegistry
from dj_cqrs.utils import get_json_valid_value

DEFAULT_BATCH_SIZE = 10000


class CQRSCommand(BaseCommand):
    """Base of the ``cqrs_*`` commands.

    Subclasses set ``registry`` (``MasterRegistry`` or ``ReplicaRegistry``) and call the
    ``add_*_argument`` helpers they need.
    """

    registry: type[RegistryMixin] = MasterRegistry
    default_batch_size = DEFAULT_BATCH_SIZE

    def add_cqrs_id_argument(self, parser: Any) -> None:
        parser.add_argument('--cqrs-id', '-cid', required=True, help='CQRS_ID of the model.')

    def add_filter_argument(self, parser: Any, required: bool = False) -> None:
        parser.add_argument(
            '--filter',
            '-f',
            required=required,
            default=None if required else '{}',
            help='Django filter keyword arguments as a JSON object, e.g. \'{"id__gt": 10}\'.',
        )

    def add_batch_argument(self, parser: Any) -> None:
        parser.add_argument(
            '--batch',
            '-b',
            type=int,
            default=self.default_batch_size,
            help=f'Rows per database query (default {self.default_batch_size}).',
        )

    def add_progress_argument(self, parser: Any) -> None:
        parser.add_argument(
            '--progress', '-p', action='store_true', help='Show a progress bar on stderr.'
        )

    def get_model(self, cqrs_id: str) -> type[Model]:
        """The model of ``cqrs_id`` in this command's registry, or a ``CommandError``."""
        model = self.registry.models.get(cqrs_id)
        if model is None:
            side = 'replica' if self.registry is ReplicaRegistry else 'master'
            raise CommandError(f'Unknown {side} CQRS_ID: {cqrs_id!r}.')
        return model

    def batch_size(self, options: dict) -> int:
        size = options.get('batch')
        if size is None:
            size = self.default_batch_size
        if size < 1:
            raise CommandError(f'--batch must be at least 1, not {size}.')
        return size

    def filtered_queryset(self, model: type[Model], filter_json: str | None) -> QuerySet:
        """``model``'s rows matching a JSON filter, or a ``CommandError`` naming the problem."""
        queryset = model._default_manager.all()
        if filter_json is None:
            return queryset
        try:
            kwargs = json.loads(filter_json)
        except ValueError as exc:
            raise CommandError(f'Bad filter: not valid JSON ({exc}).') from exc
        if not isinstance(kwargs, dict):
            raise CommandError('Bad filter: a JSON object of filter keyword arguments is needed.')
        try:
            queryset = queryset.filter(**kwargs)
        except (FieldError, ValidationError, ValueError, TypeError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CommandError(f'Bad filter for {model.CQRS_ID}: {message}') from exc
        return queryset

    def write_listing(self, options: dict, name: str, fields: tuple[str, ...], encode) -> None:
        """Print ``<CQRS_ID>,<now>``, then ``encode(batch)`` as one JSON line per batch.

        The time is taken before the first read, so rows changed later are recognisable; a
        failing first query prints nothing at all.
        """
        model = self.get_model(options['cqrs_id'])
        require_table(model, name)
        queryset = self.filtered_queryset(model, options['filter'])
        batches = iter_value_batches(queryset, fields, self.batch_size(options))
        header = f'{model.CQRS_ID},{now_header()}'
        try:
            first = next(batches, None)
        except DatabaseError as exc:
            raise CommandError(f'{name}: {str(exc).splitlines()[0]}') from exc
        write_line(self, header)
        if first is None:
            return
        for batch in chain([first], batches):
            write_line(self, dump_line(encode(batch)))

    def progress(self, total: int | None, enabled: bool, unit: str = 'rows') -> tqdm:
        """A progress bar on stderr (done / total, rate, time left), silent unless enabled."""
        return tqdm(
            total=total,
            disable=not enabled,
            file=sys.stderr,
            unit=f' {unit}',
            dynamic_ncols=True,
            mininterval=0.5,
        )


def iter_batches(queryset: QuerySet, batch_size: int) -> Iterator[list[Model]]:
    """Rows of ``queryset`` in pk order, ``batch_size`` per query (keyset pagination)."""
    return _keyset(queryset.order_by('pk'), batch_size, lambda row: row.pk)


def iter_value_batches(queryset: QuerySet, fields: tuple[str, ...], batch_size: int):
    """Like ``iter_batches``, for ``values_list(*fields)`` rows; the first field is the pk."""
    return _keyset(queryset.order_by('pk').values_list(*fields), batch_size, lambda row: row[0])


def _keyset(queryset: QuerySet, batch_size: int, pk_of: Any) -> Iterator[list]:
    """``WHERE pk > last ORDER BY pk LIMIT batch_size`` pages: never OFFSET."""
    last = None
    while True:
        page = queryset if last is None else queryset.filter(pk__gt=last)
        batch = list(page[:batch_size])
        if not batch:
            return
        yield batch
        if len(batch) < batch_size:
            return
        last = pk_of(batch[-1])


def json_pk(value: Any) -> Any:
    """A pk as it travels in streams: numbers stay numbers, the rest becomes text."""
    return get_json_valid_value(value)


def now_header() -> str:
    return str(timezone.now())


def read_header(stream: IO[str], parts: int, command: str) -> list[str]:
    """Read and split the first line of a piped stream, or fail with a one-line error."""
    line = stream.readline()
    if not line.strip():
        raise CommandError(
            f'{command}: no input. Pipe the output of the previous command into it; '
            'if that command failed, fix it first.'
        )
    fields = line.strip().split(',', parts - 1)
    if len(fields) != parts:
        raise CommandError(f'{command}: bad header line {line.strip()!r}.')
    return fields


def parse_header_datetime(value: str) -> datetime:
    """The date of a header line, aware when ``USE_TZ`` is on (naive in the default zone
    otherwise), whatever the service that wrote it used."""
    try:
        parsed = parse_datetime(value.strip())
    except ValueError:
        parsed = None
    if parsed is None:
        raise CommandError(f'Bad date in the header: {value!r}.')
    if settings.USE_TZ and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    elif not settings.USE_TZ and timezone.is_aware(parsed):
        parsed = timezone.make_naive(parsed)
    return parsed


def iter_json_lines(stream: IO[str], command: str) -> Iterator[tuple[int, Any]]:
    """``(line number, decoded JSON)`` of the body lines; a bad line is a ``CommandError``."""
    for number, line in enumerate(stream, start=2):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as exc:
            raise CommandError(f'{command}: line {number} is not valid JSON ({exc}).') from exc


# Helpers of the diff commands (``cqrs_diff_*``, ``cqrs_deleted_*``), which pipe into each other.


def input_stream(options: dict) -> IO[str]:
    """The stream a piped command reads: ``stdin=`` of ``call_command``, else ``sys.stdin``."""
    return options.get('stdin') or sys.stdin


def require_table(model: type, command: str) -> None:
    """Fail unless ``model`` is a Django model with rows to read (not a ``RawReplicaMixin``)."""
    if not (isinstance(model, type) and issubclass(model, Model)) or model._meta.abstract:
        raise CommandError(
            f'{command}: {model.CQRS_ID} is not a Django model with a table; it cannot be diffed.'
        )


def write_line(command: BaseCommand, line: str) -> None:
    """Write one line of a piped stream and flush it, so that the next command starts at once.

    When the next command of the pipe has stopped reading (it failed), this is a one-line
    ``CommandError`` instead of a ``BrokenPipeError`` traceback.
    """
    try:
        command.stdout.write(line)
        command.stdout.flush()
    except BrokenPipeError as exc:
        _drop_stdout()
        name = type(command).__module__.rpartition('.')[2]
        raise CommandError(
            f'{name}: the next command of the pipe stopped reading (see its error).'
        ) from exc


def _drop_stdout() -> None:
    # Send what is still buffered to /dev/null, or Python reports the broken pipe again at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def dump_line(value: Any) -> str:
    """A body line of a diff stream: compact JSON, as the original library writes it."""
    return json.dumps(value, separators=(',', ':'))


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _to_pk(model: type[Model], value: Any, command: str, number: int) -> Any:
    if not _is_scalar(value):
        raise CommandError(
            f'{command}: line {number}: {value!r} is not a primary key (a number or a string).'
        )
    try:
        return model._meta.pk.to_python(value)
    except ValidationError as exc:
        raise CommandError(
            f'{command}: line {number}: {value!r} is not a valid primary key of {model.CQRS_ID}.'
        ) from exc


def parse_pk_list(model: type[Model], value: Any, command: str, number: int) -> list[Any]:
    """A body line ``[pk, ...]`` as ``model``'s pk values, in order, without duplicates."""
    if not isinstance(value, list):
        raise CommandError(f'{command}: line {number} is not a JSON list of primary keys.')
    return list(dict.fromkeys(_to_pk(model, item, command, number) for item in value))


def parse_revision_list(
    model: type[Model], value: Any, command: str, number: int
) -> dict[Any, int]:
    """A body line ``[[pk, revision], ...]`` as ``{pk value: revision}``, in order."""
    if not isinstance(value, list):
        raise CommandError(f'{command}: line {number} is not a JSON list of [pk, revision] pairs.')
    revisions = {}
    for item in value:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[1], int)
            and not isinstance(item[1], bool)
        ):
            raise CommandError(f'{command}: line {number}: {item!r} is not a [pk, revision] pair.')
        revisions[_to_pk(model, item[0], command, number)] = item[1]
    return revisions


def read_diff_header(stream: IO[str], parts: int, command: str) -> list[str]:
    """``read_header`` of a diff stream (``<ID>,<now>[,<queue>]``), checking the date too."""
    fields = read_header(stream, parts, command)
    if not fields[0]:
        raise CommandError(f'{command}: no CQRS_ID in the header line.')
    try:
        parse_header_datetime(fields[1])
    except CommandError as exc:
        raise CommandError(f'{command}: {exc}') from exc
    return fields
