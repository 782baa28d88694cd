"""Pieces every consuming transport shares: the stop flag and the replica bindings."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

from dj_cqrs._logging import logger
from dj_cqrs.conf import cqrs_settings
from dj_cqrs.registries import ReplicaRegistry


class StopFlag:
    """Set by SIGTERM / SIGINT (or ``set()``); the consume loop checks it between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> None:
        """Clear the flag and, in the main thread, route SIGTERM and SIGINT to it."""
        self._event.clear()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


def consume_until_stopped(
    stop: StopFlag,
    connect: Callable[[], Any],
    consume_on: Callable[[Any], None],
    close: Callable[[Any], None],
    errors: tuple[type[BaseException], ...],
    location: str,
    first_delay: float = 1,
    max_delay: float = 30,
) -> None:
    """Connect, consume, and after losing the broker connect again, until ``stop`` is set.

    Waits ``first_delay`` seconds after a failed attempt, doubling up to ``max_delay``.
    """
    delay = first_delay
    while not stop.is_set():
        try:
            connection = connect()
        except errors as exc:
            logger.error(
                'CQRS consumer cannot connect to %s (%s); retrying in %s s.',
                location,
                type(exc).__name__,
                delay,
            )
            stop.wait(delay)
            delay = min(delay * 2, max_delay)
            continue
        delay = first_delay
        try:
            consume_on(connection)
        except errors as exc:
            logger.error(
                'CQRS consumer lost the connection to %s (%s); reconnecting.',
                location,
                type(exc).__name__,
            )
            stop.wait(delay)
        finally:
            try:
                close(connection)
            except Exception:
                pass


def replica_cqrs_ids(cqrs_ids: Iterable[str] | None = None) -> list[str]:
    """The CQRS_IDs this worker consumes: all replica models, or the given subset."""
    return sorted(ReplicaRegistry.models) if not cqrs_ids else sorted(set(cqrs_ids))


def replica_bindings(cqrs_ids: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """``(queue, routing key)`` pairs binding the replica and dead-letter queues (SPEC §6)."""
    queue = cqrs_settings.queue
    dead_letter_queue = cqrs_settings.replica.dead_letter_queue
    bindings = []
    for cqrs_id in replica_cqrs_ids(cqrs_ids):
        bindings.append((queue, cqrs_id))
        bindings.append((queue, f'cqrs.{queue}.{cqrs_id}'))
        bindings.append((dead_letter_queue, f'cqrs.{dead_letter_queue}.{cqrs_id}'))
    # Beyond the original: dead letters of CQRS_IDs this service does not know are kept too.
    bindings.append((dead_letter_queue, f'cqrs.{dead_letter_queue}.#'))
    return bindings


class BrokerTransportMixin:
    """What the broker transports share: a per-process publisher and a stop flag.

    Subclasses set ``_publisher`` (with ``close()`` and ``connections_opened``) and ``_stop``.
    """

    CONSUMER_RETRY_TIMEOUT = 1
    MAX_RECONNECT_DELAY = 30

    _publisher: Any
    _stop: StopFlag

    @classmethod
    def clean_connection(cls, *args: Any, **kwargs: Any) -> None:
        """Close this process's publishing connection."""
        cls._publisher.close()

    @classmethod
    def connections_opened(cls) -> int:
        """How many publishing connections this process has opened."""
        return cls._publisher.connections_opened

    @classmethod
    def stop(cls) -> None:
        """Ask a running ``consume()`` loop to stop after the messages in hand."""
        cls._stop.set()
