"""Logging shared by transports; override these static methods to record events."""

from __future__ import annotations

from dj_cqrs._logging import logger
from dj_cqrs.dataclasses import TransportPayload


def _describe(payload: TransportPayload) -> tuple:
    return payload.signal_type, payload.pk, payload.cqrs_id, payload.correlation_id


class LoggingMixin:
    """What a transport logs about each message, on the ``django-cqrs`` logger."""

    @staticmethod
    def log_produced(payload: TransportPayload) -> None:
        logger.info('CQRS %s is published: pk = %s (%s), correlation_id = %s.', *_describe(payload))

    @staticmethod
    def log_consumed(payload: TransportPayload) -> None:
        logger.info('CQRS %s is received: pk = %s (%s), correlation_id = %s.', *_describe(payload))

    @staticmethod
    def log_consumed_accepted(payload: TransportPayload) -> None:
        logger.info('CQRS %s is applied: pk = %s (%s), correlation_id = %s.', *_describe(payload))

    @staticmethod
    def log_consumed_denied(payload: TransportPayload) -> None:
        logger.warning(
            'CQRS %s is denied: pk = %s (%s), correlation_id = %s, retries = %s.',
            *_describe(payload),
            payload.retries,
        )

    @staticmethod
    def log_consumed_failed(payload: TransportPayload) -> None:
        logger.warning(
            'CQRS %s is failed: pk = %s (%s), correlation_id = %s, retries = %s.',
            *_describe(payload),
            payload.retries,
        )

    @staticmethod
    def log_delayed(payload: TransportPayload, delay: float, eta: object) -> None:
        logger.warning(
            'CQRS %s is delayed: pk = %s (%s), correlation_id = %s, delay = %s sec, eta = %s.',
            *_describe(payload),
            delay,
            eta,
        )

    @staticmethod
    def log_requeued(payload: TransportPayload) -> None:
        logger.warning(
            'CQRS %s is requeued: pk = %s (%s), correlation_id = %s, retries = %s.',
            *_describe(payload),
            payload.retries,
        )

    @staticmethod
    def log_dead_letter(payload: TransportPayload) -> None:
        logger.warning(
            'CQRS %s is added to dead letter queue: pk = %s (%s), correlation_id = %s.',
            *_describe(payload),
        )
