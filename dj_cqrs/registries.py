"""Registries mapping each ``CQRS_ID`` to its model class, one for each side."""

from __future__ import annotations

from dj_cqrs._logging import logger
from dj_cqrs.conf import cqrs_settings


class RegistryMixin:
    """Class-level ``{cqrs_id: model class}`` dict with registration checks."""

    models: dict[str, type] = {}
    """``{cqrs_id: model class}``."""

    @classmethod
    def register_model(cls, model_cls: type) -> None:
        """Add a model; a second model with the same ``CQRS_ID`` is a configuration error."""
        cqrs_id = model_cls.CQRS_ID
        registered = cls.models.get(cqrs_id)
        if registered is not None and _label(registered) != _label(model_cls):
            raise AssertionError(
                f"Two models can't have the same CQRS_ID: {cqrs_id}. "
                f'{_label(registered)} has it already, {_label(model_cls)} too ({cls.__name__}).'
            )
        cls.models[cqrs_id] = model_cls

    @classmethod
    def get_model_by_cqrs_id(cls, cqrs_id: str) -> type | None:
        """Return the model registered under ``cqrs_id``, or log an error and return None."""
        model_cls = cls.models.get(cqrs_id)
        if model_cls is None:
            logger.error('No model with such CQRS_ID: %s.', cqrs_id)
        return model_cls


def _label(model_cls: type) -> str:
    return f'{model_cls.__module__}.{model_cls.__qualname__}'


class MasterRegistry(RegistryMixin):
    """Master models of this service."""

    models: dict[str, type] = {}


class ReplicaRegistry(RegistryMixin):
    """Replica models of this service; registering one requires ``settings.CQRS['queue']``."""

    models: dict[str, type] = {}

    @classmethod
    def register_model(cls, model_cls: type) -> None:
        """Add a replica model; requires ``settings.CQRS['queue']``."""
        if not cqrs_settings.queue:
            raise AssertionError(
                'CQRS queue must be set for the service, that has replica models. '
                f"{_label(model_cls)} needs settings.CQRS['queue']."
            )
        super().register_model(model_cls)
