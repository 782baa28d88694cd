"""What the ``cqrs_*`` management commands share: options, CQRS_ID lookup, filters, batches,
progress bars and the header lines of piped streams."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

from django.core.exceptions import FieldError, ValidationError
from django.core.management.base import BaseCommand, CommandError
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
        size = options.get('batch') or self.default_batch_size
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
    queryset = queryset.order_by('pk')
    last = None
    while True:
        page = queryset if last is None else queryset.filter(pk__gt=last)
        batch = list(page[:batch_size])
        if not batch:
            return
        yield batch
        if len(batch) < batch_size:
            return
        last = batch[-1].pk


def iter_value_batches(queryset: QuerySet, fields: tuple[str, ...], batch_size: int):
    """Like ``iter_batches``, for ``values_list(*fields)`` rows; the first field is the pk."""
    queryset = queryset.order_by('pk').values_list(*fields)
    last = None
    while True:
        page = queryset if last is None else queryset.filter(pk__gt=last)
        batch = list(page[:batch_size])
        if not batch:
            return
        yield batch
        if len(batch) < batch_size:
            return
        last = batch[-1][0]


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
    parsed = parse_datetime(value.strip())
    if parsed is None:
        raise CommandError(f'Bad date in the header: {value!r}.')
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
