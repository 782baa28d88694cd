"""The delay queue of a replica worker: failed messages waiting for their retry time."""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Iterator
from datetime import datetime
from queue import Empty, Full
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dj_cqrs.dataclasses import TransportPayload


class DelayMessage:
    """A message waiting in a ``DelayQueue``.

    ``delivery_tag`` is the transport's handle to acknowledge the message, ``payload`` its
    ``TransportPayload`` and ``eta`` the datetime after which it is requeued.
    """

    __slots__ = ('delivery_tag', 'payload', 'eta')

    def __init__(self, delivery_tag: Any, payload: TransportPayload, eta: datetime) -> None:
        self.delivery_tag = delivery_tag
        self.payload = payload
        self.eta = eta

    def __repr__(self) -> str:
        return f'<DelayMessage {self.delivery_tag!r} eta={self.eta.isoformat()}>'


class DelayQueue:
    """Priority queue of ``DelayMessage`` ordered by ETA, holding at most ``max_size`` messages.

    Messages with the same ETA come out in the order they were put.
    """

    def __init__(self, max_size: int | None = None) -> None:
        if max_size is not None and max_size <= 0:
            raise AssertionError('Delay queue max_size should be positive integer.')
        self._max_size = max_size
        self._heap: list[tuple[float, int, DelayMessage]] = []
        self._counter = itertools.count()

    @property
    def max_size(self) -> int | None:
        return self._max_size

    def get(self) -> DelayMessage:
        """Remove and return the message with the earliest ETA; ``queue.Empty`` if none."""
        if not self._heap:
            raise Empty('Delay queue is empty')
        return heapq.heappop(self._heap)[2]

    def get_ready(self) -> Iterator[DelayMessage]:
        """Remove and yield, earliest first, the messages whose ETA has passed."""
        while self._heap and self._heap[0][0] <= time.time():
            yield heapq.heappop(self._heap)[2]

    def put(self, delay_message: DelayMessage) -> None:
        """Add a message; ``queue.Full`` when the queue already holds ``max_size`` messages."""
        if self.full():
            raise Full('Delay queue is full')
        heapq.heappush(
            self._heap, (delay_message.eta.timestamp(), next(self._counter), delay_message)
        )

    def qsize(self) -> int:
        """Number of messages in the queue."""
        return len(self._heap)

    def full(self) -> bool:
        """Whether ``put()`` would raise ``queue.Full``."""
        return self._max_size is not None and len(self._heap) >= self._max_size

    def seconds_to_next_eta(self) -> float | None:
        """Seconds until the earliest ETA (0 if it passed; None when the queue is empty)."""
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - time.time())

    def clear(self) -> None:
        """Drop every message."""
        self._heap.clear()


__all__ = ['DelayMessage', 'DelayQueue']
