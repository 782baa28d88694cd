"""What the ``cqrs_*`` management commands share: options, CQRS_ID lookup, filters, batches,
progress output and the header lines of piped streams."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import chain
from typing import IO, Any

import ujson
from django.conf import settings
from django.core.exceptions import FieldError, ValidationError
from django.core.management.base import BaseCommand, CommandError, OutputWrapper
from django.db import DatabaseError
from django.db.models import Model, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from tqdm import tqdm

from dj_cqrs.management.utils import batch_qs
from dj_cqrs.registries import MasterRegistry, RegistryMixin
from dj_cqrs.utils import get_json_valid_value

DEFAULT_BATCH_SIZE = 10000


class CQRSCommand(BaseCommand):
    """Base of the ``cqrs_*`` commands.

    Subclasses set ``registry`` (``MasterRegistry`` or ``ReplicaRegistry``) and call the
    ``add_*_argument`` helpers they need.
    """

    registry: type[RegistryMixin] = MasterRegistry
    default_batch_size = DEFAULT_BATCH_SIZE

    def add_cqrs_id_argument(self, parser: Any, short: str = '-cid') -> None:
        parser.add_argument('--cqrs-id', short, required=True, help='CQRS_ID of the model.')

    def add_filter_argument(self, parser: Any) -> None:
        parser.add_argument(
            '--filter',
            '-f',
            default=None,
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
        parser.add_argument('--progress', '-p', action='store_true', help='Display progress.')

    def get_model(self, cqrs_id: str) -> type[Model]:
        """The model of ``cqrs_id`` in this command's registry, or ``Wrong CQRS ID: <id>!``."""
        model = self.registry.get_model_by_cqrs_id(cqrs_id)
        if model is None:
            raise CommandError(f'Wrong CQRS ID: {cqrs_id}!')
        return model

    def batch_size(self, options: dict) -> int:
        size = options.get('batch')
        if size is None:
            size = self.default_batch_size
        if size < 1:
            raise CommandError(f'--batch must be at least 1, not {size}.')
        return size

    def filtered_queryset(
        self, model: type[Model], filter_json: str | None, queryset: QuerySet | None = None
    ) -> QuerySet:
        """``model``'s rows matching a JSON filter (all rows without one).

        A filter that is not a JSON object is ``Bad filter kwargs!``; one the ORM refuses is
        ``Bad filter kwargs! <its message>``.
        """
        if queryset is None:
            queryset = model._default_manager.all()
        if not filter_json:
            return queryset
        try:
            kwargs = ujson.loads(filter_json)
        except ValueError:
            kwargs = None
        if not isinstance(kwargs, dict):
            raise CommandError('Bad filter kwargs!')
        try:
            return queryset.filter(**kwargs)
        except (FieldError, ValidationError, ValueError, TypeError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CommandError(f'Bad filter kwargs! {message}') from exc

    def write_listing(self, options: dict, name: str, queryset: QuerySet, encode) -> None:
        """Print ``<CQRS_ID>,<now>``, then one line ``encode(rows)`` per batch of ``queryset``.

        Nothing but ``No objects found for filter!`` on stderr when no row matches. The time
        is taken before the first batch is read, so rows changed later are recognisable.
        """
        pages = batch_qs(queryset, self.batch_size(options))
        try:
            first = next(pages, None)  # the count
        except DatabaseError as exc:
            raise CommandError(f'{name}: {str(exc).splitlines()[0]}') from exc
        if first is None:
            self.stderr.write('No objects found for filter!')
            return
        write_line(self, f'{queryset.model.CQRS_ID},{now_header()}')
        for page in chain([first], pages):
            write_line(self, dump_line(encode(page)))

    def read_diff_header(
        self, stream: IO[str], parts: int, name: str
    ) -> tuple[type[Model], list[str]]:
        """The model and the fields of a diff stream's header ``<ID>,<now>[,<queue>]``.

        An unknown CQRS_ID is ``Wrong CQRS ID: <id>!`` before anything else is checked.
        """
        line = read_first_line(stream, name)
        cqrs_id = line.split(',', 1)[0]
        if not cqrs_id:
            raise CommandError(f'{name}: no CQRS_ID in the header line.')
        model = self.get_model(cqrs_id)
        fields = split_header(line, parts, name)
        require_table(model, name)
        try:
            parse_header_datetime(fields[1])
        except CommandError as exc:
            raise CommandError(f'{name}: {exc}') from exc
        return model, fields

    def tty_progress(self, enabled: bool, unit: str = 'rows') -> tqdm:
        """A tqdm bar on stderr, shown only when enabled and stderr is a terminal."""
        return tqdm(
            disable=not (enabled and _isatty(sys.stderr)),
            file=sys.stderr,
            unit=f' {unit}',
            dynamic_ncols=True,
            mininterval=0.5,
        )


class ProgressLine:
    """The ``--progress`` text of ``cqrs_sync`` and ``cqrs_bulk_dump``.

    ``Processing <N> records with batch size <B>``, then after every batch
    ``\\r<i> of <N> processed - <p>% with rate <r> rps, to go <eta> ...`` padded with spaces
    (the rate and the time left are those of the last batch).
    """

    def __init__(self, write: Callable[[str], None], total: int, enabled: bool) -> None:
        self.write = write
        self.total = total
        self.enabled = enabled
        self._started = 0.0
        self._done_before = 0

    def begin(self, batch_size: int) -> None:
        if self.enabled:
            self.write(f'Processing {self.total} records with batch size {batch_size}\n')

    def batch_started(self, done: int) -> None:
        self._started = time.time()
        self._done_before = done

    def batch_done(self, done: int) -> None:
        if not self.enabled:
            return
        elapsed = time.time() - self._started
        rate = (done - self._done_before) / elapsed if elapsed else 0
        percent = int(100 * done / self.total) if self.total else 100
        eta = timedelta(seconds=int((self.total - done) / rate)) if rate else 'n/a'
        self.write(
            f'\r{done} of {self.total} processed - {percent}% with rate {rate:.1f} rps, '
            f'to go {eta} ...{" ":20}'
        )


def plain_writer(stream: OutputWrapper) -> Callable[[str], None]:
    """Write text as ``print`` would: unstyled, no line ending added, flushed."""

    def write(text: str) -> None:
        stream.write(text, style_func=_unstyled, ending='')
        stream.flush()

    return write


def _unstyled(text: str) -> str:
    return text


def _isatty(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def json_pk(value: Any) -> Any:
    """A pk as it travels in streams: numbers stay numbers, the rest becomes text."""
    return get_json_valid_value(value)


def now_header() -> str:
    return str(timezone.now())


def read_first_line(stream: IO[str], command: str) -> str:
    """The stripped first line of a piped stream; no input at all is a one-line error."""
    line = stream.readline().strip()
    if not line:
        raise CommandError(
            f'{command}: no input. Pipe the output of the previous command into it; '
            'if that command failed, fix it first.'
        )
    return line


def split_header(line: str, parts: int, command: str) -> list[str]:
    """The ``parts`` comma-separated fields of a header line, or a one-line error."""
    fields = line.split(',', parts - 1)
    if len(fields) != parts:
        raise CommandError(f'{command}: bad header line {line!r}.')
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
    """A body line of a diff stream: JSON as ``ujson`` writes it by default (``\\/``,
    ``\\uXXXX``), byte for byte what django-cqrs writes."""
    return ujson.dumps(value)


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
