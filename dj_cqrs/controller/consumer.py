"""Consumer controller: applies a received payload to the replica model of its CQRS_ID."""

from __future__ import annotations

import copy
from typing import Any

from django.db import Error, connections, router, transaction

from dj_cqrs._logging import logger
from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import SignalType
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.logger import log_timed_out_queries
from dj_cqrs.registries import ReplicaRegistry
from dj_cqrs.utils import apply_query_timeouts


def consume(payload: TransportPayload) -> Any:
    """Apply ``payload`` on the replica side.

    Returns the result of the replica hook: truthy when the message is handled, falsy (the
    transport retries it) when it was not, e.g. after a database error. Other exceptions
    raised by a hook propagate to the transport, which retries the message too.
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
    """Find the replica model of ``cqrs_id`` and apply one message to it.

    The hooks are called as ``cqrs_save(data, previous_data=...)`` for a SAVE, with
    ``sync=True`` added for a SYNC, and ``cqrs_delete(data)`` for a DELETE; ``meta=...`` is
    passed to both only when the model sets ``CQRS_META``. A database error is logged and
    None is returned.
    """
    if signal_type not in SignalType.ALL:
        logger.error('Bad signal type "%s" for CQRS_ID "%s".', signal_type, cqrs_id)
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
            apply_query_timeouts(model_cls, using)
            return _apply(model_cls, signal_type, instance_data, previous_data, meta)
    except Error as exc:
        pk = instance_data.get(getattr(model_cls._meta.pk, 'name', 'id'))
        logger.error(
            '%s\nCQRS %s error: pk = %s, cqrs_revision = %s (%s).',
            exc,
            signal_type,
            pk,
            instance_data.get('cqrs_revision'),
            model_cls.CQRS_ID,
        )
        log_timed_out_queries(exc, model_cls, using)
        return None


def _apply(
    model_cls: type,
    signal_type: str,
    instance_data: dict,
    previous_data: dict | None,
    meta: dict | None,
) -> Any:
    if signal_type == SignalType.DELETE:
        if model_cls.CQRS_META:
            return model_cls.cqrs_delete(instance_data, meta=meta)
        return model_cls.cqrs_delete(instance_data)
    kwargs: dict[str, Any] = {'previous_data': previous_data}
    if model_cls.CQRS_META:
        kwargs['meta'] = meta
    if signal_type == SignalType.SYNC:
        kwargs['sync'] = True
    return model_cls.cqrs_save(instance_data, **kwargs)
