"""Metaclasses that register master and replica models and check their configuration."""

from __future__ import annotations

from django.db.models.base import ModelBase

from dj_cqrs.constants import ALL_BASIC_FIELDS
from dj_cqrs.registries import MasterRegistry, ReplicaRegistry
from dj_cqrs.tracker import CQRSTracker


def _fail(model_cls: type, message: str) -> None:
    raise AssertionError(f'{model_cls.__module__}.{model_cls.__qualname__}: {message}')


def _check_cqrs_id(model_cls: type) -> None:
    cqrs_id = getattr(model_cls, 'CQRS_ID', None)
    if not cqrs_id or not isinstance(cqrs_id, str):
        _fail(model_cls, 'CQRS_ID must be set to a non-empty string.')


def _check_field_names(model_cls: type, setting: str, names: object, *, with_pk: bool) -> None:
    if isinstance(names, str) or not isinstance(names, list | tuple | set):
        _fail(model_cls, f'{setting} must be a list of field names or {ALL_BASIC_FIELDS!r}.')
    opts = model_cls._meta
    known = {f.name for f in opts.concrete_fields}
    unknown = sorted(str(name) for name in names if name not in known)
    if unknown:
        _fail(model_cls, f'{setting} names fields the model does not have: {", ".join(unknown)}.')
    if len(set(names)) != len(names):
        _fail(model_cls, f'{setting} names a field twice.')
    if with_pk and opts.pk.name not in names:
        _fail(model_cls, f'{setting} must include the primary key {opts.pk.name!r}.')


class MasterMeta(ModelBase):
    """Metaclass of ``MasterMixin``: registers every concrete subclass."""

    def __new__(mcs, name, bases, attrs, **kwargs):
        model_cls = super().__new__(mcs, name, bases, attrs, **kwargs)
        if not model_cls._meta.abstract:
            MasterMeta.register(model_cls)
        return model_cls

    @staticmethod
    def register(model_cls: type) -> type:
        """Check a master model's configuration, register it and connect its signals."""
        from dj_cqrs.signals import MasterSignals

        _check_cqrs_id(model_cls)
        if model_cls.CQRS_FIELDS != ALL_BASIC_FIELDS:
            _check_field_names(model_cls, 'CQRS_FIELDS', model_cls.CQRS_FIELDS, with_pk=True)
            if model_cls.CQRS_SERIALIZER:
                _fail(model_cls, 'CQRS_FIELDS cannot be combined with CQRS_SERIALIZER.')
        serializer = model_cls.CQRS_SERIALIZER
        if serializer is not None and not (isinstance(serializer, str) or callable(serializer)):
            _fail(model_cls, 'CQRS_SERIALIZER must be the dotted path of a serializer class.')
        _install_tracker(model_cls)
        MasterRegistry.register_model(model_cls)
        MasterSignals.register_model(model_cls)
        return model_cls


def _install_tracker(model_cls: type) -> None:
    tracked = model_cls.CQRS_TRACKED_FIELDS
    if not tracked:
        return
    if tracked != ALL_BASIC_FIELDS:
        _check_field_names(model_cls, 'CQRS_TRACKED_FIELDS', tracked, with_pk=False)
    CQRSTracker.add_to_model(model_cls)


class ReplicaMeta(ModelBase):
    """Metaclass of ``ReplicaMixin``: registers every subclass.

    Abstract subclasses are registered when they set a ``CQRS_ID`` (table-less handlers with
    ``CQRS_NO_DB_OPERATIONS``); an abstract base without one is just a base class.
    """

    def __new__(mcs, name, bases, attrs, **kwargs):
        model_cls = super().__new__(mcs, name, bases, attrs, **kwargs)
        if not model_cls._meta.abstract or attrs.get('CQRS_ID'):
            ReplicaMeta.register(model_cls)
        return model_cls

    @staticmethod
    def register(model_cls: type) -> type:
        """Check a replica class's configuration and register it."""
        _check_cqrs_id(model_cls)
        mapping = getattr(model_cls, 'CQRS_MAPPING', None)
        if mapping is not None:
            _check_mapping(model_cls, mapping)
        ReplicaRegistry.register_model(model_cls)
        return model_cls


def _check_mapping(model_cls: type, mapping: object) -> None:
    if not isinstance(mapping, dict) or not mapping:
        _fail(model_cls, 'CQRS_MAPPING must be a non-empty dict {master field: replica field}.')
    opts = model_cls._meta
    known = {f.name for f in opts.concrete_fields} | {f.attname for f in opts.concrete_fields}
    unknown = sorted(str(name) for name in mapping.values() if name not in known)
    if unknown:
        _fail(
            model_cls, f'CQRS_MAPPING maps to fields the model does not have: {", ".join(unknown)}.'
        )
    if len(set(mapping.values())) != len(mapping):
        _fail(model_cls, 'CQRS_MAPPING maps two master fields to one replica field.')
    if opts.pk is None:
        return
    if opts.pk.name not in mapping.values() and opts.pk.attname not in mapping.values():
        _fail(model_cls, f'CQRS_MAPPING must include the primary key {opts.pk.name!r}.')
