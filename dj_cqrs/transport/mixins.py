"""Logging shared by transports; override these static methods to record events.

The lines are those of django-cqrs, word for word, so that log alerts keep matching.
"""

from __future__ import annotations

from datetime import datetime

from dj_cqrs._logging import logger
from dj_cqrs.dataclasses import TransportPayload


class LoggingMixin:
    """What a transport logs about each message, on the ``django-cqrs`` logger."""

    _BASE_PAYLOAD_LOG_TEMPLATE = 'CQRS is %s: pk = %s (%s), correlation_id = %s.'

    @staticmethod
    def log_produced(payload: TransportPayload) -> None:
        """INFO ``CQRS is published``."""
        logger.info(
            'CQRS is published: pk = %s (%s), correlation_id = %s.',
            payload.pk,
            payload.cqrs_id,
            payload.correlation_id,
        )

    @staticmethod
    def log_consumed(payload: TransportPayload) -> None:
        """INFO ``CQRS is received``."""
        logger.info(
            'CQRS is received: pk = %s (%s), correlation_id = %s.',
            payload.pk,
            payload.cqrs_id,
            payload.correlation_id,
        )

    @staticmethod
    def log_consumed_accepted(payload: TransportPayload) -> None:
        """INFO ``CQRS is applied`` (also a message handled without a change)."""
        logger.info(
            'CQRS is applied: pk = %s (%s), correlation_id = %s.',
            payload.pk,
            payload.cqrs_id,
            payload.correlation_id,
        )

    @staticmethod
    def log_consumed_denied(payload: TransportPayload) -> None:
        """WARNING ``CQRS is denied``: refused unapplied (for custom transports)."""
        logger.warning(
            'CQRS is denied: pk = %s (%s), correlation_id = %s.',
            payload.pk,
            payload.cqrs_id,
            payload.correlation_id,
        )

    @staticmethod
    def log_consumed_failed(payload: TransportPayload) -> None:
        """WARNING ``CQRS is failed``, with ``retries``."""
        logger.warning(
            'CQRS is failed: pk = %s (%s), correlation_id = %s, retries = %s.',
            payload.pk,
            payload.cqrs_id,
            payload.correlation_id,
            payload.retries,
        )

    @staticmethod
    def log_delayed(payload: TransportPayload, delay: float, eta: datetime) -> None:
        """WARNING ``CQRS is delayed``: in the delay queue for ``delay`` seconds, due at ``eta``."""
        logger.warning(
            'CQRS is delayed: pk = %s (%s), correlation_id = %s, delay = %s sec, eta = %s.',
            payload.pk,
            payload.cqrs_id,
            payload.correlation_id,
            delay,
            eta,
        )

    @staticmethod
    def log_requeued(payload: TransportPayload) -> None:
        """WARNING ``CQRS is requeued``: republished for a retry."""
        logger.warning(
            'CQRS is requeued: pk = %s (%s), correlation_id = %s.',
            payload.pk,
            payload.cqrs_id,
            payload.correlation_id,
        )

    @staticmethod
    def log_dead_letter(payload: TransportPayload) -> None:
        """WARNING ``CQRS is added to dead letter queue``."""
        logger.warning(
            'CQRS is added to dead letter queue: pk = %s (%s), correlation_id = %s.',
            payload.pk,
            payload.cqrs_id,
            payload.correlation_id,
        )
