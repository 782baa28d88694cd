"""Correlation ids of published messages."""

from __future__ import annotations

from typing import Any

from dj_cqrs.conf import cqrs_settings


def get_correlation_id(signal_type: str, cqrs_id: str, instance_pk: Any, queue: str | None) -> Any:
    """Return the correlation id given by ``settings.CQRS['master']['correlation_function']``.

    Called with the message's signal type, CQRS_ID, primary key (as the model holds it) and
    queue; returns None when no function is configured.
    """
    func = cqrs_settings.master.correlation_function
    if func is None:
        return None
    return func(signal_type, cqrs_id, instance_pk, queue)
