"""Access to ``settings.CQRS``: the one place that knows its keys, defaults and rules.

Other modules read ``cqrs_settings.exchange``, ``cqrs_settings.master.CQRS_MESSAGE_TTL``,
``cqrs_settings.replica.CQRS_MAX_RETRIES`` and so on. Values are computed from
``settings.CQRS`` on first use and recomputed when the setting changes (for example under
``override_settings``), so they are always live.

``validate()`` runs at app start (``CQRSConfig.ready()``): a wrong type raises
``ImproperlyConfigured`` naming the key; a number out of range falls back to its default with a
warning, as the original library does.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from dj_cqrs import constants
from dj_cqrs._logging import logger

COMMON_DEFAULTS: dict[str, Any] = {
    'transport': None,
    'url': None,
    'host': None,
    'port': None,
    'user': None,
    'password': None,
    'exchange': constants.DEFAULT_EXCHANGE,
    'queue': None,
    'consumer_prefetch_count': constants.DEFAULT_CONSUMER_PREFETCH_COUNT,
    'publisher_confirms': True,
    'ssl_options': None,
}

MASTER_DEFAULTS: dict[str, Any] = {
    'CQRS_AUTO_UPDATE_FIELDS': constants.DEFAULT_MASTER_AUTO_UPDATE_FIELDS,
    'CQRS_MESSAGE_TTL': constants.DEFAULT_MASTER_MESSAGE_TTL,
    'correlation_function': None,
    'meta_function': None,
    'outbox': False,
}

REPLICA_DEFAULTS: dict[str, Any] = {
    'CQRS_MAX_RETRIES': constants.DEFAULT_REPLICA_MAX_RETRIES,
    'CQRS_RETRY_DELAY': constants.DEFAULT_REPLICA_RETRY_DELAY,
    'delay_queue_max_size': constants.DEFAULT_REPLICA_DELAY_QUEUE_MAX_SIZE,
    'dead_letter_queue': None,
    'dead_message_ttl': constants.DEFAULT_DEAD_MESSAGE_TTL,
    'CQRS_QUERY_TIMEOUT': 0,
    'CQRS_LOG_TIMED_OUT_QUERIES': False,
    'CQRS_QUERY_LOGGER': None,
}

SSL_OPTION_KEYS = ('ca_certs', 'certfile', 'keyfile', 'server_hostname', 'check_hostname')

# Numeric keys: (minimum, whether None is allowed). Below the minimum: default plus a warning.
_NUMBERS: dict[tuple[str | None, str], tuple[int, bool]] = {
    (None, 'port'): (1, True),
    (None, 'consumer_prefetch_count'): (0, False),
    ('master', 'CQRS_MESSAGE_TTL'): (1, True),
    ('replica', 'CQRS_MAX_RETRIES'): (0, True),
    ('replica', 'CQRS_RETRY_DELAY'): (0, False),
    ('replica', 'delay_queue_max_size'): (1, True),
    ('replica', 'dead_message_ttl'): (1, True),
    ('replica', 'CQRS_QUERY_TIMEOUT'): (0, True),
}
_STRINGS = {
    (None, 'transport'),
    (None, 'url'),
    (None, 'host'),
    (None, 'user'),
    (None, 'password'),
    (None, 'exchange'),
    (None, 'queue'),
    ('replica', 'dead_letter_queue'),
    ('replica', 'CQRS_QUERY_LOGGER'),
}
_BOOLEANS = {
    (None, 'publisher_confirms'),
    ('master', 'CQRS_AUTO_UPDATE_FIELDS'),
    ('master', 'outbox'),
    ('replica', 'CQRS_LOG_TIMED_OUT_QUERIES'),
}
_CALLABLES = {('master', 'correlation_function'), ('master', 'meta_function')}
_ALIASES = {('replica', 'CQRS_DELAY_QUEUE_MAX_SIZE'): 'delay_queue_max_size'}


def _key_name(section: str | None, key: str) -> str:
    return f"CQRS['{section}']['{key}']" if section else f"CQRS['{key}']"


def _default(section: str | None, key: str) -> Any:
    return {None: COMMON_DEFAULTS, 'master': MASTER_DEFAULTS, 'replica': REPLICA_DEFAULTS}[section][
        key
    ]


def _check_value(section: str | None, key: str, value: Any, warn: bool) -> Any:
    """Return the value to use for one key, raising on a wrong type."""
    name = _key_name(section, key)
    if (section, key) == (None, 'ssl_options') and value is not None:
        unknown = sorted(set(value) - set(SSL_OPTION_KEYS)) if isinstance(value, dict) else None
        if unknown is None or unknown:
            raise ImproperlyConfigured(
                f'settings.{name} must be a dict with keys among {", ".join(SSL_OPTION_KEYS)}'
                + (f'; unknown: {", ".join(unknown)}.' if unknown else '.')
            )
    if value is None:
        rule = _NUMBERS.get((section, key))
        if rule and not rule[1]:
            raise ImproperlyConfigured(f'settings.{name} must be an integer, not None.')
        return None
    if (section, key) in _NUMBERS:
        minimum, _ = _NUMBERS[(section, key)]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ImproperlyConfigured(
                f'settings.{name} must be a number, not {type(value).__name__} ({value!r}).'
            )
        if value < minimum:
            default = _default(section, key)
            if warn:
                logger.warning(
                    'settings.%s=%r is out of range (minimum %s), using the default %r.',
                    name,
                    value,
                    minimum,
                    default,
                )
            return default
        return value
    if (section, key) in _STRINGS and not isinstance(value, str):
        raise ImproperlyConfigured(
            f'settings.{name} must be a string, not {type(value).__name__} ({value!r}).'
        )
    if (section, key) in _BOOLEANS and not isinstance(value, bool):
        raise ImproperlyConfigured(
            f'settings.{name} must be True or False, not {type(value).__name__} ({value!r}).'
        )
    if (section, key) in _CALLABLES:
        if isinstance(value, str):
            try:
                value = import_string(value)
            except ImportError as exc:
                raise ImproperlyConfigured(
                    f'settings.{name} = {value!r} cannot be imported: {exc}'
                ) from exc
        if not callable(value):
            raise ImproperlyConfigured(f'settings.{name} must be callable or a dotted path.')
    return value


def _build_section(section: str | None, raw: Any, defaults: dict[str, Any], warn: bool):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        where = f"settings.CQRS['{section}']" if section else 'settings.CQRS'
        raise ImproperlyConfigured(f'{where} must be a dict, not {type(raw).__name__}.')
    values = dict(defaults)
    for key, value in raw.items():
        key = _ALIASES.get((section, key), key)
        if key in defaults:
            values[key] = _check_value(section, key, value, warn)
        elif not (section is None and key in ('master', 'replica')):
            values[key] = value
    return values


def _load(warn: bool = False) -> SimpleNamespace:
    raw = getattr(settings, 'CQRS', None)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f'settings.CQRS must be a dict, not {type(raw).__name__}.')
    common = _build_section(None, raw, COMMON_DEFAULTS, warn)
    master = _build_section('master', raw.get('master'), MASTER_DEFAULTS, warn)
    replica = _build_section('replica', raw.get('replica'), REPLICA_DEFAULTS, warn)
    if replica['dead_letter_queue'] is None and common['queue']:
        replica['dead_letter_queue'] = f'dead_letter_{common["queue"]}'
    return SimpleNamespace(
        **common,
        master=SimpleNamespace(**master),
        replica=SimpleNamespace(**replica),
    )


class CQRSSettings:
    """Live, validated and defaulted view of ``settings.CQRS``."""

    def __init__(self) -> None:
        self._values: SimpleNamespace | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_'):
            raise AttributeError(name)
        if self._values is None:
            self._values = _load()
        return getattr(self._values, name)

    def reload(self) -> None:
        """Forget the computed values; the next access reads ``settings.CQRS`` again."""
        self._values = None

    def validate(self) -> None:
        """Check ``settings.CQRS`` for the app start, warning about out-of-range numbers."""
        values = _load(warn=True)
        if not values.transport:
            raise ImproperlyConfigured(
                "settings.CQRS['transport'] is required: the dotted path of a transport class."
            )
        from dj_cqrs.transport.base import BaseTransport

        try:
            transport_cls = import_string(values.transport)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"settings.CQRS['transport'] = {values.transport!r} cannot be imported: {exc}"
            ) from exc
        if not (isinstance(transport_cls, type) and issubclass(transport_cls, BaseTransport)):
            raise ImproperlyConfigured(
                f"settings.CQRS['transport'] = {values.transport!r} is not a subclass of "
                'dj_cqrs.transport.BaseTransport.'
            )
        self._values = values


cqrs_settings = CQRSSettings()


def _reload_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting == 'CQRS':
        cqrs_settings.reload()


setting_changed.connect(_reload_on_change)
