"""Producer controller: hands a master's payload to the configured transport."""

from __future__ import annotations

from dj_cqrs.dataclasses import TransportPayload


def produce(payload: TransportPayload) -> None:
    """Publish ``payload`` through ``settings.CQRS['transport']``."""
    from dj_cqrs.transport import current_transport

    current_transport.produce(payload)
