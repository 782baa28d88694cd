"""``TransportMock``: a transport that sends nothing, for silencing publishing in tests."""

from __future__ import annotations

from typing import Any

from dj_cqrs.transport.base import BaseTransport


class TransportMock(BaseTransport):
    """Does nothing: ``produce(payload)`` and ``consume(payload)`` return ``payload``.

    Set it as ``settings.CQRS['transport']`` in a project's tests so that master changes
    publish nothing. To have them applied to replica models in the same process instead, use
    ``dj_cqrs.transport.loopback.LoopbackTransport``.
    """

    @staticmethod
    def produce(payload: Any) -> Any:
        """Return ``payload``; nothing is sent or applied."""
        return TransportMock.consume(payload)

    @staticmethod
    def consume(payload: Any = None, **kwargs: Any) -> Any:
        """Return ``payload``."""
        return payload
