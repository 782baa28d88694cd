"""Pieces the broker transports share: the stop flag, the consume loop with its failover
over the nodes of ``CQRS['url']``, the replica bindings and queue arguments."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dj_cqrs._logging import logger
from dj_cqrs.conf import CQRSConfigurationError, cqrs_settings
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


def next_node(index: int, count: int) -> int:
    """The node after ``index`` in failover order (round-robin, wrapping around)."""
    return (index + 1) % count


def connect_first_live(
    connect: Callable[[int], Any],
    locations: Sequence[str],
    start: int,
    errors: tuple[type[BaseException], ...],
    who: str = 'publisher',
) -> tuple[int, Any]:
    """Connect to the first node that answers, trying each once from ``start`` in failover order.

    Returns ``(index, connection)``; raises the last error when no node answers. With several
    nodes, each node that does not answer is logged (``host:port``) with the one tried next.
    """
    count = len(locations)
    index = start % count
    for attempt in range(count):
        try:
            return index, connect(index)
        except errors as exc:
            if attempt == count - 1:
                raise
            following = next_node(index, count)
            logger.warning(
                'CQRS %s cannot connect to %s (%s); trying %s.',
                who,
                locations[index],
                type(exc).__name__,
                locations[following],
            )
            index = following
    raise AssertionError('unreachable')  # pragma: no cover


def consume_until_stopped(
    stop: StopFlag,
    connect: Callable[[int], Any],
    consume_on: Callable[[Any], None],
    close: Callable[[Any], None],
    errors: tuple[type[BaseException], ...],
    locations: Sequence[str],
    first_delay: float = 1,
    max_delay: float = 30,
) -> None:
    """Connect, consume, and after losing the broker connect again, until ``stop`` is set.

    ``connect(index)`` opens a connection to node ``locations[index]`` (``host:port``). Nodes
    are tried in order; a failed attempt or a lost connection moves on to the next node
    (round-robin). When every node failed in a row, waits ``first_delay`` seconds, doubling up
    to ``max_delay``. Errors other than ``errors`` (e.g. a configuration error) propagate.
    """
    count = len(locations)
    index = 0
    delay = first_delay
    failures = 0
    while not stop.is_set():
        location = locations[index]
        try:
            connection = connect(index)
        except errors as exc:
            failures += 1
            following = next_node(index, count)
            if failures < count:
                logger.error(
                    'CQRS consumer cannot connect to %s (%s); trying %s.',
                    location,
                    type(exc).__name__,
                    locations[following],
                )
            else:
                logger.error(
                    'CQRS consumer cannot connect to %s (%s); retrying in %s s.',
                    location if count == 1 else ', '.join(locations),
                    type(exc).__name__,
                    delay,
                )
                stop.wait(delay)
                delay = min(delay * 2, max_delay)
                failures = 0
            index = following
            continue
        delay = first_delay
        failures = 0
        try:
            consume_on(connection)
        except errors as exc:
            index = next_node(index, count)
            if count == 1:
                logger.error(
                    'CQRS consumer lost the connection to %s (%s); reconnecting.',
                    location,
                    type(exc).__name__,
                )
            else:
                logger.error(
                    'CQRS consumer lost the connection to %s (%s); reconnecting to %s.',
                    location,
                    type(exc).__name__,
                    locations[index],
                )
            stop.wait(delay)
        finally:
            try:
                close(connection)
            except Exception:
                pass


QUORUM_QUEUE_ARGUMENTS = {'x-queue-type': 'quorum'}


def replica_queue_arguments() -> dict[str, str] | None:
    """``queue_declare`` arguments of the replica and dead-letter queues.

    ``{'x-queue-type': 'quorum'}`` with ``CQRS['replica']['queue_type'] = 'quorum'``; None
    (no arguments, as the original declares them) for classic queues.
    """
    if cqrs_settings.replica.queue_type == 'quorum':
        return dict(QUORUM_QUEUE_ARGUMENTS)
    return None


_CURRENT_TYPE = re.compile(r"current is the value '([^']*)'")


def queue_type_error(queue: str, reply_text: str) -> CQRSConfigurationError | None:
    """The error to stop a worker with when the broker refused to declare ``queue`` (406
    PRECONDITION_FAILED) because it exists with another queue type; None for another refusal.
    """
    if "'x-queue-type'" not in reply_text:
        return None
    requested = cqrs_settings.replica.queue_type
    found = _CURRENT_TYPE.search(reply_text.split(' but ', 1)[-1])
    existing = found.group(1) if found else 'classic'
    return CQRSConfigurationError(
        f'CQRS queue {queue!r} exists as a {existing} queue, but '
        f"settings.CQRS['replica']['queue_type'] is {requested!r} (PRECONDITION_FAILED). "
        f'To migrate: stop every consumer of the queue, let it drain, then delete it '
        f'(rabbitmqctl delete_queue {queue}) or set a new CQRS queue name, and start the '
        f'consumers with the new queue type.'
    )


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
