"""Model mixins: ``MasterMixin`` for the owning service, ``ReplicaMixin`` for read-only copies."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from django.db import models, router, transaction
from django.db.models import DateTimeField, F, IntegerField, Manager, Model, QuerySet
from django.db.models.expressions import Combinable
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute
from django.utils.functional import classproperty
from django.utils.module_loading import import_string
from model_utils.tracker import DescriptorWrapper, FieldTracker

from dj_cqrs import _on_commit
from dj_cqrs.conf import cqrs_settings
from dj_cqrs.constants import (
    ALL_BASIC_FIELDS,
    DELETED_ATTR,
    FIELDS_TRACKER_FIELD_NAME,
    TRACKED_FIELDS_ATTR_NAME,
)
from dj_cqrs.managers import MasterManager, ReplicaManager
from dj_cqrs.metas import MasterMeta, ReplicaMeta
from dj_cqrs.signals import MasterSignals, post_bulk_create, post_update
from dj_cqrs.utils import _current_bulk_relate_cm, get_json_valid_value


class RawMasterMixin(Model):
    """Master model behaviour without the metaclass.

    Use it where ``MasterMixin``'s metaclass cannot be combined with the model's own (proxy
    models, django-mptt, diamond inheritance) and register the model by hand with
    ``MasterMeta.register(Model)``.
    """

    CQRS_ID: str | None = None
    """Name of the entity, shared with its replicas (required)."""
    CQRS_PRODUCE = True
    """``False``: count revisions but never publish."""
    CQRS_FIELDS: str | list[str] | tuple[str, ...] = ALL_BASIC_FIELDS
    """Field names to publish (the pk is always added), or ``'__all__'``."""
    CQRS_SERIALIZER: str | None = None
    """Dotted path (or class) of a serializer giving ``instance_data`` (not ``CQRS_FIELDS``)."""
    CQRS_TRACKED_FIELDS: str | list[str] | tuple[str, ...] | None = None
    """Field names (or ``'__all__'``) whose previous values are sent as ``previous_data``."""

    cqrs_revision = IntegerField(
        default=0, help_text='The number of changes published for this instance.'
    )
    """Number of changes published for the row; a replica keeps the highest it applied."""
    cqrs_updated = DateTimeField(auto_now=True, help_text='When the instance was last changed.')
    """When the row last changed (``auto_now``)."""

    objects = Manager()
    cqrs = MasterManager()
    """``MasterManager``: ``bulk_create`` and ``bulk_update`` that publish."""

    class Meta:
        abstract = True

    def save(self, *args: Any, update_cqrs_fields: bool | None = None, **kwargs: Any) -> None:
        """Save, counting a new revision for the first change of this instance in a transaction.

        ``update_fields`` saves publish nothing and keep the revision, unless
        ``update_cqrs_fields=True`` (or ``CQRS_AUTO_UPDATE_FIELDS``) is set.
        """
        update_fields = kwargs.get('update_fields')
        if update_cqrs_fields is None:
            update_cqrs_fields = cqrs_settings.master.CQRS_AUTO_UPDATE_FIELDS
        revises = update_fields is None or bool(update_cqrs_fields and update_fields)
        using = kwargs.get('using') or router.db_for_write(type(self), instance=self)
        if (
            revises
            and cqrs_settings.master.outbox
            and not transaction.get_connection(using).in_atomic_block
        ):
            with transaction.atomic(using=using):
                return self._cqrs_save(using, revises, args, kwargs)
        return self._cqrs_save(using, revises, args, kwargs)

    def _cqrs_save(self, using: str, revises: bool, args: tuple, kwargs: dict) -> None:
        if self.__dict__.pop(DELETED_ATTR, False):
            _on_commit.forget(self)
        record = _on_commit.enter(self, using)
        if record is not None:
            record.saves += 1
        if revises:
            update_fields = kwargs.get('update_fields')
            if update_fields is not None:
                kwargs['update_fields'] = {*update_fields, 'cqrs_revision', 'cqrs_updated'}
            first_revision = record is None or not record.revised
            if record is not None:
                record.revised = True
            if not self._state.adding:
                if first_revision:
                    self.cqrs_revision = F('cqrs_revision') + 1
                elif isinstance(self.cqrs_revision, Combinable):
                    self.refresh_from_db(using=using, fields=['cqrs_revision'])
        self._save_tracked_fields(merge=record is not None and record.saves > 1)
        return super().save(*args, **kwargs)

    @property
    def cqrs_saves_count(self) -> int:
        """How many times this instance was saved in the current transaction (0 outside one)."""
        return _on_commit.saves_count(self)

    @property
    def is_initial_cqrs_save(self) -> bool:
        """True until the second save of this instance in the current transaction."""
        return self.cqrs_saves_count < 2

    def reset_cqrs_saves_count(self) -> None:
        """Forget the saves of this instance in the current transaction.

        The next save then counts a new revision and queues another message.
        """
        _on_commit.forget(self)

    def save_tracked_fields(self) -> None:
        """Take the previous values of the tracked fields now, as a save does.

        In a transaction, a later save adds the fields it changed to what was taken.
        """
        self._save_tracked_fields(merge=not self.is_initial_cqrs_save)

    def is_sync_instance(self) -> bool:
        """Return False to never publish this instance (its revision still counts)."""
        return True

    def get_cqrs_meta(self, **kwargs: Any) -> dict:
        """Metadata sent with each message; by default from ``master.meta_function``."""
        func = cqrs_settings.master.meta_function
        if func is None:
            return {}
        return func(obj=self, **kwargs)

    @classmethod
    def relate_cqrs_serialization(cls, queryset: QuerySet) -> QuerySet:
        """Add ``select_related`` / ``prefetch_related`` for ``CQRS_SERIALIZER``."""
        return queryset

    def get_custom_cqrs_delete_data(self) -> Any:
        """Extra data sent under ``instance_data['custom']`` of a DELETE."""
        return None

    def to_cqrs_dict(self, using: str | None = None, sync: bool = False) -> dict:
        """Serialize the instance as the ``instance_data`` of a SAVE or SYNC."""
        if self.CQRS_SERIALIZER:
            return self._class_serialization(using, sync)
        self._refresh_f_expr_values(using)
        return self._common_serialization()

    def get_tracked_fields_data(self) -> dict | None:
        """Previous values of the tracked fields, as taken at the last save.

        They stay after publishing and are replaced by the next save; None for models
        without ``CQRS_TRACKED_FIELDS`` and instances not saved yet.
        """
        return self.__dict__.get(TRACKED_FIELDS_ATTR_NAME)

    def set_cqrs_tracked_fields_data(self, data: dict | None) -> None:
        """Set the previous values to publish (used by the bulk operations)."""
        self.__dict__[TRACKED_FIELDS_ATTR_NAME] = data

    def reset_cqrs_tracked_fields_data(self) -> None:
        """Forget the previous values taken by the last save."""
        self.__dict__.pop(TRACKED_FIELDS_ATTR_NAME, None)

    def cqrs_sync(self, using: str | None = None, queue: str | None = None) -> bool:
        """Publish the current state as a SYNC, to every replica or only to ``queue``.

        With ``CQRS_SERIALIZER`` the instance is serialized as it is in memory; otherwise it
        is read again from the database first. Returns False for unsaved instances and for
        instances gone from the database (without a serializer), True otherwise, also when
        the model does not publish (``CQRS_PRODUCE``, ``is_sync_instance()``).
        """
        if self._state.adding:
            return False
        using = using or self._state.db
        if not self.CQRS_SERIALIZER:
            try:
                self.refresh_from_db(using=using)
            except type(self).DoesNotExist:
                return False
        MasterSignals.post_save(type(self), instance=self, using=using, queue=queue, sync=True)
        return True

    @classmethod
    def call_post_bulk_create(cls, instances: list, using: str | None = None) -> None:
        """Publish SAVEs for instances created in bulk behind the ORM's back."""
        post_bulk_create.send(cls, instances=instances, using=using)

    @classmethod
    def call_post_update(cls, instances: list, using: str | None = None) -> None:
        """Publish SAVEs for instances updated in bulk behind the ORM's back."""
        post_update.send(cls, instances=instances, using=using)

    @classproperty
    def _cqrs_serializer_cls(cls) -> type:
        serializer = cls.CQRS_SERIALIZER
        cache = cls.__dict__.get('_cqrs_serializer_cache')
        if cache is None or cache[0] != serializer:
            resolved = serializer
            if isinstance(serializer, str):
                try:
                    resolved = import_string(serializer)
                except ImportError as exc:
                    raise ImportError(f"Model {cls}: CQRS_SERIALIZER can't be imported.") from exc
            cache = (serializer, resolved)
            cls._cqrs_serializer_cache = cache
        return cache[1]

    def _class_serialization(self, using: str | None, sync: bool) -> dict:
        db = using or self._state.db
        if sync:
            instance = self
        else:
            instance = None
            bulk_relate_cm = _current_bulk_relate_cm(type(self))
            if bulk_relate_cm is not None:
                instance = bulk_relate_cm.get_cached_instance(self, db)
            if instance is None:
                queryset = type(self)._default_manager.using(db)
                instance = self.relate_cqrs_serialization(queryset).get(pk=self.pk)
            if isinstance(self.cqrs_revision, Combinable):
                self._set_saved_revision(instance.cqrs_revision)
        data = dict(self._cqrs_serializer_cls(instance).data)
        data['cqrs_revision'] = instance.cqrs_revision
        data['cqrs_updated'] = str(instance.cqrs_updated)
        return data

    @classmethod
    def _cqrs_serialized_fields(cls) -> list:
        fields = cls._meta.concrete_fields
        if cls.CQRS_FIELDS == ALL_BASIC_FIELDS:
            return list(fields)
        names = set(cls.CQRS_FIELDS) | {'cqrs_revision', 'cqrs_updated'}
        return [f for f in fields if f.name in names]

    def _common_serialization(self) -> dict:
        data = {
            f.name: get_json_valid_value(f.value_from_object(self))
            for f in self._cqrs_serialized_fields()
        }
        data['cqrs_revision'] = self.cqrs_revision
        data['cqrs_updated'] = str(self.cqrs_updated)
        return data

    @classmethod
    def _cqrs_row_serialization(cls) -> tuple[list[str], Callable[[tuple], dict]] | None:
        """How to serialize rows without instances, when the model's serialization allows it.

        Returns ``(columns, serialize)``: ``serialize(row)`` turns a row of
        ``values_list(*columns)`` into the dict ``to_cqrs_dict()`` returns for the instance
        of that row (the primary key is the last column). None when the model has a
        ``CQRS_SERIALIZER`` or overrides how its instances are built or serialized: then
        only instances give the right data.
        """
        if cls.CQRS_SERIALIZER or not _default_serialization(cls):
            return None
        fields = cls._cqrs_serialized_fields()
        if not all(_plain_field(cls, field) for field in fields):
            return None
        names = [field.name for field in fields]
        converted = [
            (index, field.name, str if field.name == 'cqrs_updated' else get_json_valid_value)
            for index, field in enumerate(fields)
            if field.name == 'cqrs_updated' or type(field) not in _VERBATIM_FIELDS
        ]

        def serialize(row: tuple) -> dict:
            data = dict(zip(names, row, strict=False))  # the last column is the pk
            for index, name, convert in converted:
                data[name] = convert(row[index])
            return data

        return [field.attname for field in fields] + [cls._meta.pk.attname], serialize

    def _refresh_f_expr_values(self, using: str | None) -> None:
        stale = [
            f.attname
            for f in self._cqrs_serialized_fields()
            if isinstance(f.value_from_object(self), Combinable)
        ]
        if stale:
            self.refresh_from_db(using=using or self._state.db, fields=stale)

    def _set_saved_revision(self, revision: int) -> None:
        """Replace the ``F()`` increment left by a save with the revision it stored."""
        self.cqrs_revision = revision
        tracker = getattr(self, FIELDS_TRACKER_FIELD_NAME, None)
        if tracker is not None and 'cqrs_revision' in tracker.fields:
            tracker.set_saved_fields(fields=['cqrs_revision'])

    def _save_tracked_fields(self, merge: bool = False) -> None:
        tracker = getattr(self, FIELDS_TRACKER_FIELD_NAME, None)
        if tracker is None:
            return
        if self._state.adding:
            changed = tracker.changed_initial()
        else:
            changed = {
                name: None if isinstance(value, Combinable) else value
                for name, value in tracker.changed().items()
            }
        collected = self.__dict__.get(TRACKED_FIELDS_ATTR_NAME)
        if merge and collected is not None:
            for name, value in changed.items():
                collected.setdefault(name, value)
        else:
            self.__dict__[TRACKED_FIELDS_ATTR_NAME] = changed


# Field classes whose values are never dates, times or UUIDs: sent as read.
_VERBATIM_FIELDS = frozenset(
    {
        models.AutoField,
        models.BigAutoField,
        models.SmallAutoField,
        models.IntegerField,
        models.BigIntegerField,
        models.SmallIntegerField,
        models.PositiveIntegerField,
        models.PositiveBigIntegerField,
        models.PositiveSmallIntegerField,
        models.BooleanField,
        models.FloatField,
        models.DecimalField,
        models.CharField,
        models.TextField,
        models.SlugField,
        models.EmailField,
        models.URLField,
        models.JSONField,
    }
)

# What ``to_cqrs_dict()`` of an instance read from the database depends on: when the model
# keeps all of these, a row read with ``values_list()`` gives the same dict.
_SERIALIZATION_HOOKS = (
    '__init__',
    'from_db',
    'to_cqrs_dict',
    'relate_cqrs_serialization',
    '_common_serialization',
    '_cqrs_serialized_fields',
    '_refresh_f_expr_values',
)


# The code of the ``__init__`` wrapper that the field tracker (``CQRS_TRACKED_FIELDS``)
# installs: it only starts tracking, after the model's own ``__init__``.
_TRACKER_INIT_CODES = frozenset(
    code for code in FieldTracker.patch_init.__code__.co_consts if isinstance(code, types.CodeType)
)


def _default_serialization(model_cls: type) -> bool:
    return all(
        _function(model_cls, name) is _function(RawMasterMixin, name)
        for name in _SERIALIZATION_HOOKS
    )


def _function(owner: type, name: str) -> Any:
    attribute = getattr(owner, name)
    function = getattr(attribute, '__func__', attribute)
    while getattr(function, '__code__', None) in _TRACKER_INIT_CODES:
        function = function.__wrapped__
    return function


def _plain_field(model_cls: type, field: Any) -> bool:
    """Whether the instance attribute of ``field`` is the value read from the database."""
    if type(field).value_from_object is not models.Field.value_from_object:
        return False
    for klass in model_cls.__mro__:
        if field.attname in klass.__dict__:
            descriptor = klass.__dict__[field.attname]
            # The tracker's wrapper returns the wrapped descriptor's value.
            while isinstance(descriptor, DescriptorWrapper):
                descriptor = descriptor.descriptor
            return type(descriptor) in (DeferredAttribute, ForeignKeyDeferredAttribute)
    return False


class MasterMixin(RawMasterMixin, metaclass=MasterMeta):
    """Mixin for models whose changes are published to replicas.

    Set ``CQRS_ID``; optionally ``CQRS_FIELDS``, ``CQRS_SERIALIZER``, ``CQRS_TRACKED_FIELDS``
    and ``CQRS_PRODUCE``. The model registers itself when the class is created.
    """

    class Meta:
        abstract = True


class RawReplicaMixin:
    """Replica behaviour for classes that are not Django models.

    Override ``cqrs_save`` and ``cqrs_delete`` and register the class with
    ``ReplicaMeta.register(cls)``.
    """

    CQRS_ID: str | None = None
    """The master's ``CQRS_ID`` (required)."""
    CQRS_NO_DB_OPERATIONS = True
    """No transaction and no lookup: ``cqrs_save`` and ``cqrs_delete`` do everything."""
    CQRS_META = False
    """Pass the message's ``meta=`` to the hooks."""
    CQRS_ONLY_DIRECT_SYNCS = False
    """Ignore SYNCs broadcast to every replica; apply only those sent to this queue."""

    @classmethod
    def cqrs_save(cls, master_data: dict, **kwargs: Any) -> Any:
        """Apply a SAVE or SYNC; return a truthy value when handled.

        Called as ``cqrs_save(data, previous_data=...)``, plus ``sync=True`` for a SYNC and
        ``meta=...`` when ``CQRS_META`` is set.
        """
        raise NotImplementedError

    @classmethod
    def cqrs_delete(cls, master_data: dict, **kwargs: Any) -> Any:
        """Apply a DELETE; return a truthy value when handled (``meta=...`` with ``CQRS_META``)."""
        raise NotImplementedError

    @staticmethod
    def should_retry_cqrs(current_retry: int, exception: BaseException | None = None) -> bool:
        """Whether a failed message is retried (default: up to ``CQRS_MAX_RETRIES``)."""
        max_retries = cqrs_settings.replica.CQRS_MAX_RETRIES
        return max_retries is None or current_retry < max_retries

    @staticmethod
    def get_cqrs_retry_delay(current_retry: int) -> float:
        """Seconds to wait before a retry (default: ``CQRS_RETRY_DELAY``)."""
        return cqrs_settings.replica.CQRS_RETRY_DELAY


class ReplicaMixin(RawReplicaMixin, Model, metaclass=ReplicaMeta):
    """Mixin for read-only copies of a master model, kept up to date by ``cqrs_consume``.

    Set ``CQRS_ID`` as on the master; optionally ``CQRS_MAPPING``,
    ``CQRS_CUSTOM_SERIALIZATION``, ``CQRS_SELECT_FOR_UPDATE``, ``CQRS_META``,
    ``CQRS_ONLY_DIRECT_SYNCS`` and ``CQRS_NO_DB_OPERATIONS`` (then ``cqrs_save`` and
    ``cqrs_delete`` must be overridden; an abstract model with a ``CQRS_ID`` is a table-less
    handler).
    """

    CQRS_MAPPING: dict[str, str] | None = None
    """``{master_field: replica_field}``; only the mapped fields are kept."""
    CQRS_CUSTOM_SERIALIZATION = False
    """Pass the mapped data to the hooks without checking it against the model's fields."""
    CQRS_SELECT_FOR_UPDATE = False
    """Read the existing row with ``select_for_update()``."""
    CQRS_NO_DB_OPERATIONS = False
    """``True``: the hooks do everything, as on ``RawReplicaMixin``."""

    cqrs_revision = IntegerField()
    """The master's revision of the row last applied."""
    cqrs_updated = DateTimeField()
    """The master's ``cqrs_updated`` of the row last applied."""

    objects = Manager()
    cqrs = ReplicaManager()
    """``ReplicaManager``: the default implementation of the hooks."""

    class Meta:
        abstract = True

    @classmethod
    def cqrs_save(
        cls,
        master_data: dict,
        previous_data: dict | None = None,
        sync: bool = False,
        meta: dict | None = None,
    ) -> Any:
        """Create or update the row from master data, following the revision rules."""
        if cls.CQRS_NO_DB_OPERATIONS:
            return super().cqrs_save(master_data, previous_data=previous_data, sync=sync, meta=meta)
        return cls.cqrs.save_instance(master_data, previous_data, sync, meta)

    @classmethod
    def cqrs_create(
        cls,
        sync: bool,
        mapped_data: dict,
        previous_data: dict | None = None,
        meta: dict | None = None,
    ) -> Any:
        """Create the row (override for custom creation).

        ``mapped_data`` names foreign keys as the master sends them (``author``), with the
        related primary key as the value.
        """
        return cls._default_manager.create(**cls.cqrs.model_field_values(mapped_data))

    def cqrs_update(
        self,
        sync: bool,
        mapped_data: dict,
        previous_data: dict | None = None,
        meta: dict | None = None,
    ) -> Any:
        """Update the row (override for custom updates)."""
        for name, value in type(self).cqrs.model_field_values(mapped_data).items():
            setattr(self, name, value)
        self.save()
        return self

    @classmethod
    def cqrs_delete(cls, master_data: dict, meta: dict | None = None) -> bool:
        """Delete the row named by ``master_data['id']``; True even if it was not there."""
        if cls.CQRS_NO_DB_OPERATIONS:
            return super().cqrs_delete(master_data, meta=meta)
        return cls.cqrs.delete_instance(master_data)
