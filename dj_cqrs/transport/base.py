"""The interface every transport implements."""

from __future__ import annotations

from typing import Any

from dj_cqrs.dataclasses import TransportPayload


class BaseTransport:
    """A way to move CQRS messages from masters to replicas.

    ``produce`` is called by the master side for every message; ``consume`` runs a replica
    worker, handing each received payload to ``dj_cqrs.controller.consumer.consume``.
    """

    consumers: dict[str, Any] = {}

    @staticmethod
    def produce(payload: TransportPayload) -> Any:
        """Send one payload."""
        raise NotImplementedError

    @staticmethod
    def consume(*args: Any, **kwargs: Any) -> Any:
        """Receive payloads and apply them, usually until stopped."""
        raise NotImplementedError

    @staticmethod
    def clean_connection(*args: Any, **kwargs: Any) -> None:
        """Close whatever connection the transport keeps open in this process."""
