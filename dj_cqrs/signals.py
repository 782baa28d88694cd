"""Signal wiring of master models: every committed change becomes a message for the producer."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db import router, transaction
from django.db.models import signals
from django.db.models.expressions import Combinable
from django.dispatch import Signal
from django.utils import timezone

from dj_cqrs import _on_commit, outbox
from dj_cqrs._logging import logger
from dj_cqrs.constants import DELETED_ATTR, SignalType
from dj_cqrs.controller import producer
from dj_cqrs.dataclasses import TransportPayload
from dj_cqrs.utils import (
    _current_bulk_relate_cm,
    get_json_valid_value,
    get_message_expiration_dt,
)

_OUTBOX_ATTR = '_cqrs_outbox_ref'

post_bulk_create = Signal()
"""Sent by ``MasterManager.bulk_create``: ``sender`` model, ``instances``, ``using``."""

post_update = Signal()
"""Sent by ``MasterManager.bulk_update``: ``sender`` model, ``instances``, ``using``."""


class MasterSignals:
    """Connects a master model's signals to publishing."""

    @classmethod
    def register_model(cls, model_cls: type) -> None:
        """Connect ``post_save``, ``post_delete`` and the two bulk signals of ``model_cls``."""
        uid = f'dj_cqrs.{model_cls._meta.label}'
        signals.post_save.connect(cls.post_save, sender=model_cls, dispatch_uid=uid)
        signals.pre_delete.connect(cls.pre_delete, sender=model_cls, dispatch_uid=uid)
        signals.post_delete.connect(cls.post_delete, sender=model_cls, dispatch_uid=uid)
        post_bulk_create.connect(cls.post_bulk_create, sender=model_cls, dispatch_uid=uid)
        post_update.connect(cls.post_bulk_update, sender=model_cls, dispatch_uid=uid)

    @staticmethod
    def post_save(sender: type, **kwargs: Any) -> None:
        """Publish a SAVE (or, with ``sync=True``, a SYNC) once the transaction commits.

        A save restricted by ``update_fields`` without the CQRS fields publishes nothing; so do
        further saves of an instance whose SAVE is already waiting for the commit.
        """
        update_fields = kwargs.get('update_fields')
        if update_fields is not None and 'cqrs_revision' not in update_fields:
            return
        instance = kwargs['instance']
        if not is_published(instance):
            return
        using = kwargs.get('using') or router.db_for_write(sender, instance=instance)
        queue = kwargs.get('queue')
        if kwargs.get('sync', False):
            transaction.on_commit(
                lambda: _produce_save(sender, instance, using, True, queue), using=using
            )
            return
        record = _on_commit.enter(instance, using)
        if record is not None and record.callback is not None:
            ref = instance.__dict__.get(_OUTBOX_ATTR)
            if ref is not None and sender.CQRS_TRACKED_FIELDS:
                outbox.update_previous_data(ref, instance.get_tracked_fields_data())
            return
        bulk_relate_cm = _current_bulk_relate_cm(sender)
        if bulk_relate_cm is not None:
            bulk_relate_cm.register(instance, using)
        ref = None
        if outbox.is_enabled():
            ref = outbox.record(
                using,
                sender.CQRS_ID,
                instance.pk,
                SignalType.SAVE,
                previous_data=instance.get_tracked_fields_data(),
            )
            instance.__dict__[_OUTBOX_ATTR] = ref

        def publish() -> bool:
            return _produce_save(sender, instance, using, False, queue, ref)

        if record is None:
            publish()
        else:
            record.callback = publish

    @staticmethod
    def pre_delete(sender: type, **kwargs: Any) -> None:
        """Read the stored revision of a row about to be deleted, if it is an expression."""
        instance = kwargs['instance']
        if isinstance(instance.cqrs_revision, Combinable):
            instance.refresh_from_db(using=kwargs.get('using'), fields=['cqrs_revision'])

    @staticmethod
    def post_delete(sender: type, **kwargs: Any) -> None:
        """Publish a DELETE once the transaction commits (it replaces a pending SAVE)."""
        instance = kwargs['instance']
        instance.__dict__[DELETED_ATTR] = True
        if not is_published(instance):
            return
        using = kwargs.get('using') or router.db_for_write(sender, instance=instance)
        instance_data = {
            'id': get_json_valid_value(instance.pk),
            'cqrs_revision': instance.cqrs_revision + 1,
            'cqrs_updated': str(timezone.now()),
        }
        custom = instance.get_custom_cqrs_delete_data()
        if custom:
            instance_data['custom'] = custom
        payload = _build_payload(sender, instance, SignalType.DELETE, instance_data, None, None)
        if outbox.is_enabled():
            outbox.attach(
                payload,
                outbox.record(
                    using, sender.CQRS_ID, payload.pk, SignalType.DELETE, payload=payload.to_dict()
                ),
            )
        transaction.on_commit(lambda: _produce(payload), using=using)

    @classmethod
    def post_bulk_create(cls, sender: type, **kwargs: Any) -> None:
        """Publish a SAVE for every instance created by ``bulk_create``."""
        for instance in kwargs['instances']:
            cls.post_save(sender, instance=instance, using=kwargs.get('using'))

    @classmethod
    def post_bulk_update(cls, sender: type, **kwargs: Any) -> None:
        """Publish a SAVE for every instance updated by ``bulk_update``."""
        for instance in kwargs['instances']:
            cls.post_save(sender, instance=instance, using=kwargs.get('using'))


def is_published(instance: Any) -> bool:
    """Whether changes of ``instance`` are published (``CQRS_PRODUCE`` and
    ``is_sync_instance()``)."""
    return bool(type(instance).CQRS_PRODUCE and instance.is_sync_instance())


def publish_sync(instance: Any, using: str, queue: str | None = None) -> bool:
    """Publish a SYNC of an instance just read from the database (no re-read)."""
    if not is_published(instance):
        return False
    return _produce_save(type(instance), instance, using, True, queue)


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


def _produce_save(
    model_cls: type,
    instance: Any,
    using: str,
    sync: bool,
    queue: str | None,
    ref: outbox.OutboxRef | None = None,
) -> bool:
    if instance.__dict__.get(DELETED_ATTR):
        outbox.mark_published(ref)
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
        outbox.mark_published(ref)
        return False
    except Exception:
        logger.exception(
            'CQRS %s is skipped: pk = %s (%s) could not be serialized.',
            signal_type,
            pk,
            model_cls.CQRS_ID,
        )
        return False
    outbox.attach(payload, ref)
    return _produce(payload)


def _produce(payload: TransportPayload) -> bool:
    from dj_cqrs.transport import current_transport

    try:
        published = producer.produce(payload)
        if published is not False and not getattr(current_transport, 'settles_outbox', False):
            outbox.mark_published(outbox.ref_of(payload))
    except Exception:
        logger.exception(
            'CQRS %s is not published: pk = %s (%s), correlation_id = %s.',
            payload.signal_type,
            payload.pk,
            payload.cqrs_id,
            payload.correlation_id,
        )
        return False
    return published is not False
