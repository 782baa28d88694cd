"""Transports, and ``current_transport``: the one configured in ``settings.CQRS``."""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string

from dj_cqrs.conf import cqrs_settings
from dj_cqrs.transport.base import BaseTransport
from dj_cqrs.transport.kombu import KombuTransport
from dj_cqrs.transport.rabbit_mq import RabbitMQTransport

_resolved: dict[str, type[BaseTransport]] = {}


class _CurrentTransport:
    """Stands for the transport class named by ``settings.CQRS['transport']``, read live."""

    def _resolve(self) -> type[BaseTransport]:
        path = cqrs_settings.transport
        if not path:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured("settings.CQRS['transport'] is not set.")
        transport = _resolved.get(path)
        if transport is None:
            transport = _resolved[path] = import_string(path)
        return transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resolve(), name)

    def __repr__(self) -> str:
        try:
            return f'<current_transport: {self._resolve().__name__}>'
        except Exception as exc:
            return f'<current_transport: unresolved ({exc})>'


current_transport = _CurrentTransport()
"""The class named by ``settings.CQRS['transport']``, resolved on every attribute access (so
``override_settings`` applies); ``ImproperlyConfigured`` when unset."""

__all__ = ['BaseTransport', 'KombuTransport', 'RabbitMQTransport', 'current_transport']
