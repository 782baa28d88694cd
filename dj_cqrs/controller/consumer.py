"""Consumer controller: applies a received payload to the replica model of its CQRS_ID."""

from __future__ import annotations

import copy
from typing import Any

from django.db import connections, router, transaction

from dj_cqrs._logging import logger
from dj_cqrs._query_log import install_last_query_capturer, log_timed_out_queries
from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import DB_VENDOR_MYSQL, DB_VENDOR_PG, SignalType
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.registries import ReplicaRegistry


def consume(payload: TransportPayload) -> Any:
    """Apply ``payload`` on the replica side.

    Returns the truthy result of the replica hook when the message is handled, a falsy value
    when it failed; an exception raised by a hook is logged and raised again for the
    transport to retry or dead-letter the message.
    """
    payload = copy.deepcopy(payload)
    return route_signal_to_replica_model(
        payload.signal_type,
        payload.cqrs_id,
        payload.instance_data,
        previous_data=payload.previous_data,
        meta=payload.meta,
        queue=payload.queue,
    )


def route_signal_to_replica_model(
    signal_type: str,
    cqrs_id: str,
    instance_data: dict,
    previous_data: dict | None = None,
    meta: dict | None = None,
    queue: str | None = None,
) -> Any:
    """Find the replica model of ``cqrs_id`` and apply one message to it."""
    if signal_type not in SignalType.ALL:
        logger.error('Bad signal type %r for CQRS_ID %s.', signal_type, cqrs_id)
        return None
    if not isinstance(instance_data, dict):
        logger.error('Bad instance_data for CQRS_ID %s: a JSON object is required.', cqrs_id)
        return None

    model_cls = ReplicaRegistry.get_model_by_cqrs_id(cqrs_id)
    if model_cls is None:
        return None

    if (
        signal_type == SignalType.SYNC
        and model_cls.CQRS_ONLY_DIRECT_SYNCS
        and queue != cqrs_settings.queue
    ):
        return True

    if model_cls.CQRS_NO_DB_OPERATIONS:
        return _apply(model_cls, signal_type, instance_data, previous_data, meta)

    using = router.db_for_write(model_cls)
    if not connections[using].in_atomic_block:
        # Only this database's connection: others may be in the middle of a transaction.
        connections[using].close_if_unusable_or_obsolete()
    try:
        with transaction.atomic(using=using):
            _apply_query_timeout(using)
            try:
                return _apply(model_cls, signal_type, instance_data, previous_data, meta)
            except Exception as exc:
                log_timed_out_queries(exc, using)
                raise
    except Exception as exc:
        pk = instance_data.get('id', instance_data.get(model_cls._meta.pk.name))
        logger.error('CQRS %s error: pk = %s (%s): %s', signal_type, pk, cqrs_id, exc)
        raise


def _apply(
    model_cls: type,
    signal_type: str,
    instance_data: dict,
    previous_data: dict | None,
    meta: dict | None,
) -> Any:
    meta_kwargs = {'meta': meta} if model_cls.CQRS_META else {}
    if signal_type == SignalType.DELETE:
        return model_cls.cqrs_delete(instance_data, **meta_kwargs)
    return model_cls.cqrs_save(
        instance_data,
        previous_data=previous_data,
        sync=signal_type == SignalType.SYNC,
        **meta_kwargs,
    )


def _apply_query_timeout(using: str) -> None:
    timeout = cqrs_settings.replica.CQRS_QUERY_TIMEOUT
    if not timeout:
        return
    connection = connections[using]
    if cqrs_settings.replica.CQRS_LOG_TIMED_OUT_QUERIES:
        install_last_query_capturer(connection)
    if connection.vendor == DB_VENDOR_PG:
        statement = 'SET LOCAL statement_timeout TO %s'
    elif connection.vendor == DB_VENDOR_MYSQL:
        statement = 'SET SESSION MAX_EXECUTION_TIME=%s'
    else:
        return
    with connection.cursor() as cursor:
        cursor.execute(statement, [int(timeout)])
