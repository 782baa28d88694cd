"""Signal wiring of master models: every committed change becomes a message for the producer."""

from __future__ import annotations

from typing import Any

from django.db import router
from django.db.models import signals
from django.db.models.expressions import Combinable
from django.dispatch import Signal

from dj_cqrs.constants import DELETED_ATTR
from dj_cqrs.controller import producer

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
        producer.publish_save(
            sender, instance, using, sync=kwargs.get('sync', False), queue=kwargs.get('queue')
        )

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
        producer.publish_delete(sender, instance, using)

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
