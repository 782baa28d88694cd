"""Producer controller: hands a master's payload to the configured transport."""

from __future__ import annotations

from typing import Any

from dj_cqrs.dataclasses import TransportPayload


def produce(payload: TransportPayload) -> Any:
    """Publish ``payload`` through ``settings.CQRS['transport']``; False if it was not sent."""
    from dj_cqrs.transport import current_transport

    return current_transport.produce(payload)
