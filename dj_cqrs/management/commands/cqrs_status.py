"""``manage.py cqrs_status``: the replication status of this service, for people and probes.

Exit status: 0 when every threshold given holds, 1 when one is exceeded, 2 when the broker or a
database cannot be reached; each problem is one line on stderr, ``CQRS status: ...``.
"""

from __future__ import annotations

import json
from typing import Any

from dj_cqrs import status as cqrs_status
from dj_cqrs.management.base import CQRSCommand

UNKNOWN = 'unknown'


class Command(CQRSCommand):
    help = (
        'Replication status: queue, dead letters, last applied message and lag per CQRS_ID '
        '(replica); outbox backlog and broker (master). Exit status 0 when the thresholds '
        'hold, 1 when one is exceeded, 2 when the broker or the database cannot be reached.'
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument('--json', action='store_true', help='Print JSON instead of tables.')
        parser.add_argument(
            '--max-lag',
            type=float,
            metavar='SECONDS',
            help='Exceeded when a CQRS_ID lags more while messages wait in the queue.',
        )
        parser.add_argument(
            '--max-ready', type=int, metavar='N', help='Most ready messages in the replica queue.'
        )
        parser.add_argument(
            '--max-dead-letters', type=int, metavar='N', help='Most messages in dead letters.'
        )
        parser.add_argument(
            '--max-outbox-age',
            type=float,
            metavar='SECONDS',
            help='Greatest age of the oldest outbox row of any database.',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        status = cqrs_status.collect()
        unreachable = unreachable_lines(status)
        exceeded = [] if unreachable else exceeded_lines(status, options)
        if options['json']:
            document = status.as_dict()
            document['problems'] = unreachable + exceeded
            self.stdout.write(json.dumps(document, indent=2))
        else:
            self.stdout.write(render(status))
        for line in unreachable + exceeded:
            self.stderr.write(f'CQRS status: {line}')
        if unreachable:
            raise SystemExit(2)
        if exceeded:
            raise SystemExit(1)


def unreachable_lines(status: cqrs_status.Status) -> list[str]:
    """Why the status is incomplete: the broker or a database did not answer."""
    lines = []
    if not status.broker_reachable:
        lines.append(f'broker {status.broker} unreachable: {status.broker_error}')
    if status.database_error:
        lines.append(f'database {status.database_error}')
    return lines


def exceeded_lines(status: cqrs_status.Status, options: dict) -> list[str]:
    """One line per threshold exceeded, naming the option and the value found."""
    lines = []
    queue = status.queue
    max_lag = options.get('max_lag')
    if max_lag is not None and queue is not None:
        # A replica with nothing to apply is not behind, however old its last change.
        waiting = (queue.ready or 0) + (queue.unacknowledged or 0)
        for model in status.models:
            if model.lag is not None and model.lag > max_lag and waiting:
                lines.append(
                    f'lag of {model.cqrs_id} is {model.lag:.1f} s with {waiting} message(s) '
                    f'waiting, over --max-lag {max_lag:g}'
                )
    max_ready = options.get('max_ready')
    if max_ready is not None and queue is not None and (queue.ready or 0) > max_ready:
        lines.append(
            f'{queue.ready} ready message(s) in {queue.name}, over --max-ready {max_ready}'
        )
    max_dead = options.get('max_dead_letters')
    if max_dead is not None and (status.dead_letters or 0) > max_dead:
        lines.append(f'{status.dead_letters} dead letter(s), over --max-dead-letters {max_dead}')
    max_age = options.get('max_outbox_age')
    if max_age is not None:
        for outbox in status.outbox:
            if outbox.oldest_age is not None and outbox.oldest_age > max_age:
                lines.append(
                    f'oldest outbox row of database {outbox.database} is '
                    f'{outbox.oldest_age:.1f} s old, over --max-outbox-age {max_age:g}'
                )
    return lines


def render(status: cqrs_status.Status) -> str:
    """The human-readable tables of ``status``."""
    reach = 'reachable' if status.broker_reachable else f'UNREACHABLE ({status.broker_error})'
    parts = [f'CQRS status ({status.side}), broker {status.broker or "-"}: {reach}']
    if status.side in ('replica', 'both'):
        parts.append(
            _table(
                ['Queue', 'Ready', 'Unacked', 'Consumers'],
                [
                    [q.name, _figure(q.ready), _figure(q.unacknowledged), _figure(q.consumers)]
                    for q in status.queues
                ],
            )
        )
        parts.append(f'Dead letters: {_figure(status.dead_letters)}')
        parts.append(
            _table(
                ['CQRS_ID', 'Last applied', 'Master updated', 'Lag (s)'],
                [
                    [
                        m.cqrs_id,
                        _time(m.last_applied),
                        _time(m.last_master_updated),
                        '-' if m.lag is None else f'{m.lag:.1f}',
                    ]
                    for m in status.models
                ],
            )
        )
    if status.side in ('master', 'both'):
        parts.append(
            _table(
                ['Outbox database', 'Rows', 'Oldest (s)'],
                [
                    [
                        o.database,
                        str(o.rows),
                        '-' if o.oldest_age is None else f'{o.oldest_age:.1f}',
                    ]
                    for o in status.outbox
                ],
            )
        )
    if status.database_error:
        parts.append(f'Database error: {status.database_error}')
    return '\n\n'.join(parts)


def _figure(value: int | None) -> str:
    return UNKNOWN if value is None else str(value)


def _time(value: Any) -> str:
    return '-' if value is None else value.isoformat(timespec='seconds')


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return '  '.join([first, *rest]).rstrip()

    return '\n'.join(line(row) for row in [header, *rows])
