"""A third-party transport as a user would write it, for ``tests/test_custom_transport.py``.

Its "broker" confirms each message later, from a thread of its own, the way an asynchronous
client library does. It uses only the transport interface (``dj_cqrs.transport.base``): it
knows nothing about the outbox, yet with the outbox on its confirms delete the outbox rows and
its refusals keep them for ``cqrs_relay``.
"""

import queue
import threading
import time

from dj_cqrs.transport.base import BaseTransport


class Broker:
    """Takes messages at once and settles them later on its own thread.

    While ``paused`` is clear nothing is settled; ``refuse`` makes it refuse what it settles.
    ``confirmed`` and ``refused`` list the settled payloads.
    """

    def __init__(self) -> None:
        self.paused = threading.Event()
        self.refuse = False
        self.confirmed = []
        self.refused = []
        self._inbox = queue.Queue()
        self._thread = threading.Thread(target=self._run, name='custom-broker', daemon=True)
        self._thread.start()

    def send(self, payload, on_delivery) -> None:
        self._inbox.put((payload, on_delivery))

    def wait_settled(self, timeout: float = 10.0) -> bool:
        """Whether everything sent so far was settled within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self._inbox.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self) -> None:
        self.paused.clear()
        self._inbox.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            self.paused.wait()
            payload, on_delivery = item
            ok = not self.refuse
            (self.confirmed if ok else self.refused).append(payload)
            if on_delivery is not None:
                on_delivery(ok)
            self._inbox.task_done()


class ConfirmingTransport(BaseTransport):
    """Publishes to ``Broker``; reports each message's fate through the producer's callback."""

    broker: Broker | None = None
    reports_delivery = True
    flush_timeout = 10.0

    @classmethod
    def produce(cls, payload):
        cls.broker.send(payload, cls.delivery_callback(payload))
        return True

    @classmethod
    def flush(cls, timeout: float | None = None) -> bool:
        """Wait for the broker's confirms (``cqrs_relay`` and ``cqrs_sync`` call it)."""
        return cls.broker.wait_settled(cls.flush_timeout if timeout is None else timeout)

    @staticmethod
    def consume(*args, **kwargs):
        return None

    @staticmethod
    def clean_connection(*args, **kwargs):
        return None


class PlainTransport(BaseTransport):
    """A transport written for django-cqrs: ``produce`` returns None, or False when down."""

    sent = []
    down = False

    @classmethod
    def produce(cls, payload):
        if cls.down:
            return False
        cls.sent.append(payload)
        return None

    @staticmethod
    def consume(*args, **kwargs):
        return None
