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
from dj_cqrs.managers import batch_kind
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


def consume_batch(payloads: list[TransportPayload]) -> list[tuple[Any, BaseException | None]]:
    """Apply the payloads of one poll in order: ``(result, exception)`` for each.

    The results and log lines of each message are those of ``consume``. The messages of a
    model that ``managers.batch_kind`` accepts are applied together with bulk statements, in
    a savepoint; when that fails, they are applied one by one (each in its savepoint), so one
    bad message fails alone. The messages of one model keep their order; the models are
    applied in the order they appear, except that a model without relations may be applied
    ahead of the next model's messages (nothing in the database ties them).
    """
    outcomes: list[Any] = [None] * len(payloads)
    for segment in _segments(payloads):
        done: set[int] = set()
        for index, model_cls in segment:
            if index in done:
                continue
            if model_cls is None:
                outcomes[index] = _consume_one(payloads[index])
                continue
            group = [i for i, other in segment if other is model_cls]
            done.update(group)
            results = _apply_group(model_cls, [payloads[i] for i in group])
            for i, outcome in zip(group, results, strict=True):
                outcomes[i] = outcome
    return outcomes


def _segments(payloads: list[TransportPayload]) -> list[list[tuple[int, type | None]]]:
    """Cut the batch where reordering the models could change the result.

    Each message comes with its model when it can be bulk-applied, else None. A segment holds
    the messages of at most one model that is not ``'isolated'`` (a related model, or one whose
    hooks run per message); models without relations join any segment.
    """
    segments: list[list[tuple[int, type | None]]] = [[]]
    anchor: Any = None
    kinds: dict[type, str | None] = {}  # batch_kind per model, for this batch
    for index, payload in enumerate(payloads):
        model_cls = ReplicaRegistry.models.get(payload.cqrs_id)
        kind = _bulk_kind(payload, model_cls, kinds)
        if kind != 'isolated' and model_cls is not None and not _skipped_sync(payload, model_cls):
            if anchor is not None and anchor is not model_cls:
                segments.append([])
            anchor = model_cls
        segments[-1].append((index, model_cls if kind else None))
    return [segment for segment in segments if segment]


def _bulk_kind(payload: TransportPayload, model_cls: type | None, kinds: dict) -> str | None:
    if (
        model_cls is None
        or payload.signal_type not in SignalType.ALL
        or not isinstance(payload.instance_data, dict)
        or _skipped_sync(payload, model_cls)
    ):
        return None
    if model_cls not in kinds:
        kinds[model_cls] = batch_kind(model_cls)
    return kinds[model_cls]


def _skipped_sync(payload: TransportPayload, model_cls: type) -> bool:
    return (
        payload.signal_type == SignalType.SYNC
        and model_cls.CQRS_ONLY_DIRECT_SYNCS
        and payload.queue != cqrs_settings.queue
    )


def _apply_group(
    model_cls: type, payloads: list[TransportPayload]
) -> list[tuple[Any, BaseException | None]]:
    if len(payloads) > 1:
        messages = [
            (p.signal_type == SignalType.DELETE, p.instance_data, p.signal_type == SignalType.SYNC)
            for p in payloads
        ]
        using = router.db_for_write(model_cls)
        try:
            with transaction.atomic(using=using):
                apply_query_timeouts(model_cls, using)
                return [(result, None) for result in model_cls.cqrs.apply_batch(messages)]
        except Exception as exc:
            logger.debug(
                'CQRS batch of %s messages (%s) is applied one by one: %r',
                len(payloads),
                model_cls.CQRS_ID,
                exc,
            )
    return [_consume_one(payload) for payload in payloads]


def _consume_one(payload: TransportPayload) -> tuple[Any, BaseException | None]:
    try:
        return consume(payload), None
    except Exception as exc:
        logger.error('CQRS service exception', exc_info=True)
        return None, exc


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
