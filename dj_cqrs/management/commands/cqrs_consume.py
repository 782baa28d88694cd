"""``manage.py cqrs_consume``: run the replica's consumer workers."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from dj_cqrs.management._supervisor import Supervisor
from dj_cqrs.registries import ReplicaRegistry


class Command(BaseCommand):
    help = 'Start CQRS consumer worker processes applying master changes to replica models.'

    def add_arguments(self, parser):
        parser.add_argument(
            '--workers', '-w', type=int, default=1, help='Number of worker processes (1).'
        )
        parser.add_argument(
            '--cqrs-id',
            '-cid',
            nargs='*',
            action='extend',
            default=None,
            help='Consume only these CQRS_IDs (default: every replica model).',
        )
        parser.add_argument(
            '--reload',
            '-r',
            action='store_true',
            help='Restart the workers when a .py file changes (and on SIGHUP).',
        )
        parser.add_argument(
            '--ignore-paths',
            nargs='?',
            default='',
            const='',
            help='Comma-separated paths whose changes do not trigger a reload.',
        )
        parser.add_argument(
            '--sigint-timeout',
            nargs='?',
            type=float,
            default=5,
            const=5,
            help='Seconds a stopping worker gets to finish its message before SIGKILL (5).',
        )
        parser.add_argument(
            '--sigkill-timeout',
            nargs='?',
            type=float,
            default=1,
            const=1,
            help='Seconds to wait for a worker after SIGKILL (1).',
        )
        parser.add_argument(
            '--metrics-port',
            type=int,
            default=None,
            help='Serve the Prometheus metrics of the workers on this port '
            '(needs django-cqrs[metrics]).',
        )
        parser.add_argument(
            '--metrics-host',
            default='',
            help='Address the metrics endpoint listens on (all interfaces).',
        )

    def handle(self, *args, **options):
        workers = options['workers']
        if workers < 1:
            raise CommandError(f'--workers must be at least 1, not {workers}.')
        cqrs_ids = options['cqrs_id'] or None
        metrics_port = options['metrics_port']
        if metrics_port is not None and not 0 <= metrics_port <= 65535:
            raise CommandError(f'--metrics-port must be a port number, not {metrics_port}.')
        if not ReplicaRegistry.models:
            raise CommandError('This service has no replica models to consume for.')
        for cqrs_id in cqrs_ids or ():
            if ReplicaRegistry.get_model_by_cqrs_id(cqrs_id) is None:
                raise CommandError(f'Wrong CQRS ID: {cqrs_id}!')
        ignore_paths = [
            str(Path(p.strip()).resolve())
            for p in (options['ignore_paths'] or '').split(',')
            if p.strip()
        ]
        Supervisor(
            workers,
            cqrs_ids=cqrs_ids,
            watch=options['reload'],
            ignore_paths=ignore_paths,
            sigint_timeout=_or_default(options['sigint_timeout'], 5),
            sigkill_timeout=_or_default(options['sigkill_timeout'], 1),
            metrics_port=metrics_port,
            metrics_host=options['metrics_host'],
        ).run()


def _or_default(value: float | None, default: float) -> float:
    return default if value is None else value
