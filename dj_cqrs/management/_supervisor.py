"""The process supervisor behind ``cqrs_consume``: N workers, restarts, reload, graceful stop."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from django.core.management.base import CommandError
from django.db import connections

from dj_cqrs._logging import logger
from dj_cqrs.conf import CQRSConfigurationError

# Exit code of a worker stopped by a configuration error (sysexits EX_CONFIG): not restarted.
EXIT_CONFIGURATION_ERROR = 78

# The metrics endpoint of the running supervisor (``--metrics-port``), inherited by the workers.
_metrics_server = None


def _worker_main(cqrs_ids: Sequence[str] | None) -> None:
    from dj_cqrs.transport import current_transport

    if _metrics_server is not None:
        _metrics_server.close_in_child()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    try:
        current_transport.consume(cqrs_ids=cqrs_ids)
    except CQRSConfigurationError as exc:
        logger.error('CQRS consumer stopped: %s', exc)
        sys.exit(EXIT_CONFIGURATION_ERROR)


class Supervisor:
    """Keeps ``workers`` consumer processes running until SIGTERM / SIGINT.

    A worker that dies is started again, unless it stopped on a configuration error (exit code
    ``EXIT_CONFIGURATION_ERROR``): then every worker is stopped and ``run()`` raises
    ``CommandError``. SIGHUP (and, with ``watch``, a change to a ``.py``
    file) restarts all of them. Stopping sends SIGINT, waits ``sigint_timeout`` seconds for
    the workers to finish the message in hand, then SIGKILLs what is left and waits
    ``sigkill_timeout`` more.

    With ``metrics_port``, the workers record Prometheus metrics (``dj_cqrs.metrics``) and this
    process serves their sum on ``metrics_host:metrics_port``.
    """

    poll_interval = 0.2
    restart_backoff_max = 10.0

    def __init__(
        self,
        workers: int,
        cqrs_ids: Sequence[str] | None = None,
        watch: bool = False,
        ignore_paths: Sequence[str] = (),
        sigint_timeout: float = 5,
        sigkill_timeout: float = 1,
        target: Callable[[Sequence[str] | None], None] = _worker_main,
        metrics_port: int | None = None,
        metrics_host: str = '',
    ) -> None:
        self.workers = workers
        self.cqrs_ids = cqrs_ids
        self.watch = watch
        self.ignore_paths = list(ignore_paths)
        self.sigint_timeout = sigint_timeout
        self.sigkill_timeout = sigkill_timeout
        self.target = target
        self._context = multiprocessing.get_context('fork')
        self._processes: list = []
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._failures: dict[int, tuple[int, float]] = {}
        self._configuration_error = False
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self._metrics = None

    def run(self) -> None:
        """Run until stopped by a signal."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        if self.watch:
            threading.Thread(target=self._watch_files, daemon=True).start()
        if self.metrics_port is not None:
            self._start_metrics()
        try:
            self._processes = [self._start(index) for index in range(self.workers)]
            while not self._stop.is_set():
                self._stop.wait(self.poll_interval)
                if self._reload.is_set():
                    self._reload.clear()
                    logger.info('CQRS consumer: reloading %s workers.', self.workers)
                    self._stop_all()
                    self._processes = [self._start(index) for index in range(self.workers)]
                    continue
                self._restart_dead()
        finally:
            self._stop_all()
            self._stop_metrics()
        if self._configuration_error:
            raise CommandError(
                'A CQRS consumer worker stopped on a configuration error (logged above).'
            )

    def _start_metrics(self) -> None:
        global _metrics_server
        from django.core.exceptions import ImproperlyConfigured

        from dj_cqrs.metrics import MetricsServer

        try:
            self._metrics = MetricsServer(self.metrics_port, self.metrics_host).start()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(f'Cannot serve metrics on port {self.metrics_port}: {exc}') from None
        _metrics_server = self._metrics

    def _stop_metrics(self) -> None:
        global _metrics_server
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = _metrics_server = None

    def _process_dead(self, process) -> None:
        if self._metrics is not None:
            self._metrics.process_dead(process.pid)

    def _start(self, index: int):
        connections.close_all()
        process = self._context.Process(
            target=self.target, args=(self.cqrs_ids,), name=f'cqrs-worker-{index}', daemon=False
        )
        process.start()
        logger.info('CQRS consumer: worker %s started (pid %s).', index, process.pid)
        return process

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for index, process in enumerate(self._processes):
            if process.is_alive():
                continue
            count, not_before = self._failures.get(index, (0, 0.0))
            if now < not_before:
                continue
            if process.exitcode == EXIT_CONFIGURATION_ERROR:
                logger.error(
                    'CQRS consumer: worker %s (pid %s) stopped on a configuration error; stopping.',
                    index,
                    process.pid,
                )
                self._configuration_error = True
                self._stop.set()
                return
            logger.error(
                'CQRS consumer: worker %s (pid %s) exited with code %s; starting it again.',
                index,
                process.pid,
                process.exitcode,
            )
            backoff = min(self.restart_backoff_max, 0.5 * 2**count)
            self._failures[index] = (count + 1, now + backoff)
            self._process_dead(process)
            self._processes[index] = self._start(index)

    def _stop_all(self) -> None:
        alive = [p for p in self._processes if p.is_alive()]
        for process in alive:
            _signal(process.pid, signal.SIGINT)
        deadline = time.monotonic() + self.sigint_timeout
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
        stragglers = [p for p in alive if p.is_alive()]
        for process in stragglers:
            logger.warning('CQRS consumer: worker pid %s did not stop; killing it.', process.pid)
            _signal(process.pid, signal.SIGKILL)
        for process in stragglers:
            process.join(self.sigkill_timeout)
        for process in alive:
            self._process_dead(process)
        self._processes = []

    def _watch_files(self) -> None:
        from watchfiles import PythonFilter, watch

        python_filter = PythonFilter(ignore_paths=self.ignore_paths)
        for changes in watch(os.getcwd(), watch_filter=python_filter, stop_event=self._stop):
            logger.info('CQRS consumer: %s changed, reloading.', sorted(p for _, p in changes)[0])
            self._reload.set()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
