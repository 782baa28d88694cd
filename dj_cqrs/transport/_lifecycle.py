"""Pieces every consuming transport shares: the stop flag and the replica bindings."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable

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
    return bindings
