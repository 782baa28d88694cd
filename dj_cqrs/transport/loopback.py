"""An in-process transport for tests and demos: what is produced is applied at once."""

from __future__ import annotations

from typing import Any

import ujson

from dj_cqrs.controller import consumer
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.transport.base import BaseTransport


class LoopbackTransport(BaseTransport):
    """Hands every produced payload to the consumer controller of the same process.

    For a project (or a test suite) that has the master and the replica models in one
    process: ``settings.CQRS['transport'] = 'dj_cqrs.transport.loopback.LoopbackTransport'``
    makes every master change reach the replica models synchronously, without a broker.
    The payload goes through its JSON wire form first, so a test fails where a real broker
    would: on data that cannot be serialized. ``produce`` returns the replica hook's result.
    """

    @staticmethod
    def produce(payload: TransportPayload) -> Any:
        """Encode the payload to JSON and back, then ``consume()`` it; the hook's result."""
        body = ujson.dumps(payload.to_dict())
        received = TransportPayload.from_message(ujson.loads(body))
        received.queue = payload.queue
        return LoopbackTransport.consume(received)

    @staticmethod
    def consume(payload: TransportPayload | None = None, **kwargs: Any) -> Any:
        """Apply ``payload`` with ``dj_cqrs.controller.consumer.consume``; None without one."""
        if payload is None:
            return None
        return consumer.consume(payload)
