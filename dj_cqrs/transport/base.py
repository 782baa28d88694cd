"""The interface every transport implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dj_cqrs.dataclasses import TransportPayload

DeliveryCallback = Callable[[bool], None]
"""Called with True once the broker took a message for good; with False when the broker
refused it or it could not be sent (a True may still follow if the transport sends it again)."""

_DELIVERY_ATTR = '_cqrs_on_delivery'


class BaseTransport:
    """A way to move CQRS messages from masters to replicas.

    ``produce`` is called by the master side for every message; ``consume`` runs a replica
    worker, handing each received payload to ``dj_cqrs.controller.consumer.consume``.

    What happens once a message is sent (the outbox row deleted, or kept for ``cqrs_relay``)
    is the producer's business. By default the producer takes a ``produce`` that returns
    anything but ``False`` (and does not raise) as delivered. A transport whose broker
    confirms messages later sets ``reports_delivery = True`` and calls, for every payload it
    accepted, the callback given by ``delivery_callback(payload)`` when the broker confirmed
    (``True``) or refused (``False``) it.
    """

    consumers: dict[str, Any] = {}
    """Kept from django-cqrs for transports that register consumers; unused by the shipped ones."""

    reports_delivery: bool = False
    """Whether ``produce`` reports each message's fate through ``delivery_callback``."""

    @staticmethod
    def produce(payload: TransportPayload) -> Any:
        """Send one payload; ``False`` when it could not be sent."""
        raise NotImplementedError

    @classmethod
    def produce_many(cls, payloads: Sequence[TransportPayload]) -> list[Any]:
        """Send payloads in order; per payload, what ``produce`` returned.

        By default one ``produce`` call each; a transport that can send many messages at
        once overrides it.
        """
        return [cls.produce(payload) for payload in payloads]

    @staticmethod
    def consume(*args: Any, **kwargs: Any) -> Any:
        """Receive payloads and apply them, usually until stopped."""
        raise NotImplementedError

    @staticmethod
    def clean_connection(*args: Any, **kwargs: Any) -> None:
        """Close whatever connection the transport keeps open in this process."""

    @staticmethod
    def delivery_callback(payload: TransportPayload) -> DeliveryCallback | None:
        """The producer's callback for ``payload``, or None when nobody waits for its fate.

        Call it, from any thread, with True once the broker confirmed the message, and with
        False when the broker refused it or the connection broke before the confirm (the
        producer then has the relay publish it at once; a later True still counts). A message
        with a callback is kept by the producer (in the outbox), so a transport may fail it
        fast when the broker is down.
        """
        return getattr(payload, _DELIVERY_ATTR, None)


def set_delivery_callback(payload: TransportPayload, callback: DeliveryCallback | None) -> None:
    """Give ``payload`` the callback its transport reports the delivery through (producer)."""
    setattr(payload, _DELIVERY_ATTR, callback)
