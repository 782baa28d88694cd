"""A transport for tests: what is produced is applied at once, in the same process."""

from __future__ import annotations

from typing import Any

import ujson

from dj_cqrs.controller import consumer
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.transport.base import BaseTransport


class TransportMock(BaseTransport):
    """Hands every produced payload to the consumer controller, through its JSON wire form.

    The round trip through JSON makes a test fail where a real broker would: on data that
    cannot be serialized.
    """

    @staticmethod
    def produce(payload: TransportPayload) -> Any:
        body = ujson.dumps(payload.to_dict())
        received = TransportPayload.from_message(ujson.loads(body))
        received.queue = payload.queue
        return TransportMock.consume(received)

    @staticmethod
    def consume(payload: TransportPayload | None = None, **kwargs: Any) -> Any:
        if payload is None:
            return None
        return consumer.consume(payload)
