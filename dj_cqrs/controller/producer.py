"""Producer controller: the master's one publishing pipeline.

The signal handlers say what to publish (``publish_save``, ``publish_delete``) and in which
database. From there the producer owns the rest: the outbox row written in the change's
transaction, the one publish per instance and transaction run after the commit, the payload
built from the committed row, the transport call, and what a delivery or a failure means for
the outbox row. ``produce(payload)`` stays the plain hand-over to the transport.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db import transaction
from django.utils import timezone

from dj_cqrs import _on_commit, metrics
from dj_cqrs._logging import logger
from dj_cqrs.constants import DELETED_ATTR, SignalType
from dj_cqrs.controller import _outbox
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.transport import current_transport
from dj_cqrs.transport.base import set_delivery_callback
from dj_cqrs.utils import (
    _current_bulk_relate_cm,
    get_json_valid_value,
    get_message_expiration_dt,
)

_OUTBOX_ATTR = '_cqrs_outbox_ref'


def produce(payload: TransportPayload) -> Any:
    """Publish ``payload`` through ``settings.CQRS['transport']``; False if it was not sent."""
    recorder = metrics.master
    if recorder is None:
        return current_transport.produce(payload)
    try:
        result = current_transport.produce(payload)
    except Exception:
        recorder.produced(payload, False)
        raise
    recorder.produced(payload, result)
    return result


def produce_many(payloads: Sequence[TransportPayload]) -> list[Any]:
    """Publish ``payloads`` in one hand-over to the transport; per payload, what ``produce``
    returns (one ``produce`` call each for a transport without ``produce_many``)."""
    many = getattr(current_transport, 'produce_many', None)
    if many is None or not _sends_as_produce(getattr(many, '__self__', None)):
        return [produce(payload) for payload in payloads]
    recorder = metrics.master
    if recorder is None:
        return many(payloads)
    try:
        results = many(payloads)
    except Exception:
        for payload in payloads:
            recorder.produced(payload, False)
        raise
    for payload, result in zip(payloads, results, strict=False):
        recorder.produced(payload, result)
    return results


def _sends_as_produce(transport: Any) -> bool:
    """Whether ``transport.produce_many`` is defined where its ``produce`` is or below: a
    subclass that overrides only ``produce`` gets one ``produce`` call per payload."""
    if not isinstance(transport, type):
        return True
    mro = transport.__mro__

    def depth(name: str) -> int:
        return next((i for i, cls in enumerate(mro) if name in cls.__dict__), len(mro))

    return depth('produce_many') <= depth('produce')


def dispatch(
    payload: TransportPayload,
    delivered: Callable[[], Any] | None = None,
    failed: Callable[[], Any] | None = None,
) -> bool:
    """Hand ``payload`` to the transport; call ``delivered()`` once the broker has it.

    A transport with ``reports_delivery`` calls back when its broker confirms (and when it
    refuses the message, or loses it before the confirm: then ``failed()`` is called, once,
    and a later confirm still calls ``delivered()``); for the others a ``produce`` that does
    not return False counts as delivered. Returns whether the transport took the payload;
    what the transport raises propagates.
    """
    recorder = metrics.master
    keeps = delivered is not None  # a message with a callback is kept until it is delivered
    if recorder is not None:
        delivered, failed = _metered(recorder, payload.cqrs_id, delivered, failed)
    reports = delivered is not None and getattr(current_transport, 'reports_delivery', False)
    if reports:
        set_delivery_callback(payload, _DeliveryReport(delivered, failed, keeps))
    sent = produce(payload) is not False
    if sent and delivered is not None and not reports:
        delivered()
    return sent


def _metered(
    recorder: Any,
    cqrs_id: str,
    delivered: Callable[[], Any] | None,
    failed: Callable[[], Any] | None,
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """``delivered`` and ``failed`` that count confirmed and failed messages first."""

    def on_delivered() -> Any:
        recorder.confirmed.labels(cqrs_id).inc()
        return None if delivered is None else delivered()

    def on_failed() -> Any:
        recorder.failed.labels(cqrs_id).inc()
        return None if failed is None else failed()

    return on_delivered, on_failed


def flush() -> bool:
    """Wait until the broker confirmed what this process sent (transports with ``flush``)."""
    wait = getattr(current_transport, 'flush', None)
    return wait is None or bool(wait())


class _DeliveryReport:
    """The callback a reporting transport gets: ``delivered()`` on the first True,
    ``failed()`` on the first False before it.

    ``keeps`` is False when the callback only counts (metrics): the transport then treats the
    message as one without a callback (``keeps_message``)."""

    __slots__ = ('_delivered', '_failed', 'keeps_message')

    def __init__(
        self,
        delivered: Callable[[], Any],
        failed: Callable[[], Any] | None,
        keeps: bool = True,
    ) -> None:
        self._delivered: Callable[[], Any] | None = delivered
        self._failed = failed
        self.keeps_message = keeps

    def __call__(self, ok: bool) -> None:
        if not ok:
            failed, self._failed = self._failed, None
            if failed is not None and self._delivered is not None:
                failed()
            return
        delivered, self._delivered = self._delivered, None
        if delivered is not None:
            delivered()


def publish_save(
    model_cls: type,
    instance: Any,
    using: str,
    sync: bool = False,
    queue: str | None = None,
) -> None:
    """Publish a SAVE of ``instance`` (a SYNC with ``sync=True``) once ``using`` commits.

    Outside a transaction it is published now. Inside one, the first save of the instance
    writes its outbox row (when the outbox is on) and queues one publish for the commit;
    further saves in that transaction only complete the row's tracked previous values.
    """
    if sync:
        transaction.on_commit(
            lambda: _publish_saved(model_cls, instance, using, True, queue), using=using
        )
        return
    record = _on_commit.enter(instance, using)
    if record is not None and record.callback is not None:
        ref = instance.__dict__.get(_OUTBOX_ATTR)
        if ref is not None and model_cls.CQRS_TRACKED_FIELDS:
            _outbox.update_previous_data(ref, instance.get_tracked_fields_data())
        return
    bulk_relate_cm = _current_bulk_relate_cm(model_cls)
    if bulk_relate_cm is not None:
        bulk_relate_cm.register(instance, using)
    ref = None
    if _outbox.is_enabled():
        ref = _outbox.record(
            using,
            model_cls.CQRS_ID,
            instance.pk,
            SignalType.SAVE,
            previous_data=instance.get_tracked_fields_data(),
        )
        instance.__dict__[_OUTBOX_ATTR] = ref

    def publish() -> bool:
        return _publish_saved(model_cls, instance, using, False, queue, ref)

    if record is None:
        publish()
    else:
        record.callback = publish


def publish_delete(model_cls: type, instance: Any, using: str) -> None:
    """Publish a DELETE of ``instance`` (just deleted) once ``using`` commits."""
    instance_data = {
        'id': get_json_valid_value(instance.pk),
        'cqrs_revision': instance.cqrs_revision + 1,
        'cqrs_updated': str(timezone.now()),
    }
    custom = instance.get_custom_cqrs_delete_data()
    if custom:
        instance_data['custom'] = custom
    payload = _build_payload(model_cls, instance, SignalType.DELETE, instance_data, None, None)
    ref = None
    if _outbox.is_enabled():
        ref = _outbox.record(
            using, model_cls.CQRS_ID, payload.pk, SignalType.DELETE, payload=payload.to_dict()
        )
    transaction.on_commit(lambda: _send(payload, ref), using=using)


def build_save_payload(
    model_cls: type,
    instance: Any,
    using: str,
    sync: bool = False,
    queue: str | None = None,
    previous_data: dict | None = None,
) -> TransportPayload:
    """The SAVE (or SYNC) message of ``instance`` as it is in the database now."""
    signal_type = SignalType.SYNC if sync else SignalType.SAVE
    instance_data = instance.to_cqrs_dict(using, sync=sync)
    if previous_data is None:
        previous_data = instance.get_tracked_fields_data()
    return _build_payload(model_cls, instance, signal_type, instance_data, previous_data, queue)


def _build_payload(
    model_cls: type,
    instance: Any,
    signal_type: str,
    instance_data: dict,
    previous_data: dict | None,
    queue: str | None,
) -> TransportPayload:
    meta = instance.get_cqrs_meta(
        instance_data=instance_data, previous_data=previous_data, signal_type=signal_type
    )
    return TransportPayload(
        signal_type,
        model_cls.CQRS_ID,
        instance_data,
        instance.pk,
        queue=queue,
        previous_data=previous_data,
        expires=get_message_expiration_dt(),
        meta=meta,
    )


def _publish_saved(
    model_cls: type,
    instance: Any,
    using: str,
    sync: bool,
    queue: str | None,
    ref: _outbox.OutboxRef | None = None,
) -> bool:
    """After the commit: build the SAVE / SYNC from the committed row and send it."""
    if instance.__dict__.get(DELETED_ATTR):
        _outbox.forget(ref)
        _outbox.flush_due()
        return False
    signal_type = SignalType.SYNC if sync else SignalType.SAVE
    pk = instance.pk
    try:
        payload = build_save_payload(model_cls, instance, using, sync, queue)
    except ImportError:
        raise
    except ObjectDoesNotExist:
        logger.error(
            'CQRS %s is skipped: pk = %s (%s) does not exist any more.',
            signal_type,
            pk,
            model_cls.CQRS_ID,
        )
        _outbox.forget(ref)
        _outbox.flush_due()
        return False
    except Exception:
        logger.exception(
            'CQRS %s is skipped: pk = %s (%s) could not be serialized.',
            signal_type,
            pk,
            model_cls.CQRS_ID,
        )
        return False
    return _send(payload, ref)


def _send(payload: TransportPayload, ref: _outbox.OutboxRef | None) -> bool:
    """Send after the commit; the outbox row ``ref`` goes once delivered, stays otherwise (and
    is due for the relay at once when the publish failed)."""
    sent = False
    try:
        if ref is None:
            sent = dispatch(payload)
        else:
            sent = dispatch(payload, lambda: _outbox.forget(ref), lambda: _outbox.failed(ref))
        return sent
    except Exception:
        logger.exception(
            'CQRS %s is not published: pk = %s (%s), correlation_id = %s.',
            payload.signal_type,
            payload.pk,
            payload.cqrs_id,
            payload.correlation_id,
        )
        return False
    finally:
        if ref is not None:
            if not sent:
                _outbox.mark_failed(ref)
            _outbox.flush_due()
