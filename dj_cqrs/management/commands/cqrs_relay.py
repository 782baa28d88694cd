"""``manage.py cqrs_relay``: publish what the transactional outbox still holds."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import CommandError
from django.db import DatabaseError, connections

from dj_cqrs import outbox
from dj_cqrs._logging import logger
from dj_cqrs.management.base import CQRSCommand
from dj_cqrs.models import CQRSOutboxMessage
from dj_cqrs.transport._lifecycle import StopFlag


class Command(CQRSCommand):
    help = (
        'Publish the changes left in the CQRS outbox (broker down, process killed before the '
        'publish), oldest first. Runs until SIGTERM, or once with --once.'
    )
    default_batch_size = 500

    def add_arguments(self, parser):
        parser.add_argument('--once', action='store_true', help='Relay what is there, then exit.')
        self.add_batch_argument(parser)
        parser.add_argument(
            '--min-age',
            type=float,
            default=5.0,
            help='Leave rows younger than this many seconds to the on-commit publishing (5).',
        )
        parser.add_argument(
            '--interval', type=float, default=1.0, help='Seconds between polls when idle (1).'
        )
        parser.add_argument(
            '--database',
            action='append',
            default=None,
            help='Database alias to relay from (repeatable; default: every database).',
        )

    def handle(self, *args, **options):
        if not outbox.is_enabled():
            self.stderr.write("Note: settings.CQRS['master']['outbox'] is off.")
        batch_size = self.batch_size(options)
        aliases = self._aliases(options['database'])
        stop = StopFlag()
        if not options['once']:
            stop.install()
        total = 0
        while True:
            relayed = 0
            for alias in aliases:
                try:
                    relayed += self._drain(alias, batch_size, options['min_age'], stop)
                except (outbox.RelayError, DatabaseError, OSError) as exc:
                    if options['once']:
                        raise CommandError(f'Relay from {alias} failed: {exc}') from exc
                    logger.error('CQRS outbox relay from %s failed: %s', alias, exc)
            total += relayed
            if options['once'] or stop.is_set():
                break
            if not relayed:
                stop.wait(options['interval'])
        self.stderr.write(f'Relayed {total} outbox messages.')

    def _drain(self, alias: str, batch_size: int, min_age: float, stop: StopFlag) -> int:
        relayed = 0
        while not stop.is_set():
            count = outbox.relay_batch(alias, batch_size, min_age)
            relayed += count
            if count < batch_size:
                break
        return relayed

    def _aliases(self, requested: list[str] | None) -> list[str]:
        aliases = requested or list(settings.DATABASES)
        unknown = [alias for alias in aliases if alias not in settings.DATABASES]
        if unknown:
            raise CommandError(f'Unknown database: {", ".join(unknown)}.')
        table = CQRSOutboxMessage._meta.db_table
        present = []
        for alias in aliases:
            try:
                if table in connections[alias].introspection.table_names():
                    present.append(alias)
            except DatabaseError as exc:
                raise CommandError(f'Cannot inspect database {alias}: {exc}') from exc
        if not present:
            raise CommandError(
                f'No database has the {table} table: run manage.py migrate dj_cqrs first.'
            )
        return present
