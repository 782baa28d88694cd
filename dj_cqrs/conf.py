"""Access to ``settings.CQRS``: the one place that knows its keys, defaults and rules.

Other modules read ``cqrs_settings.exchange``, ``cqrs_settings.master.CQRS_MESSAGE_TTL``,
``cqrs_settings.replica.CQRS_MAX_RETRIES`` and so on. Values are computed from
``settings.CQRS`` on first use and recomputed when the setting changes (for example under
``override_settings``), so they are always live.

``validate()`` runs at app start (``CQRSConfig.ready()``) when the project has CQRS models, with
the original library's outcomes: a wrong value raises ``CQRSConfigurationError`` (both an
``ImproperlyConfigured`` and an ``AssertionError``); an invalid retry/TTL/delay-queue number is
replaced by its default with a warning; the defaults of the ``master`` and ``replica`` sections
are written into ``settings.CQRS`` itself, where user code may read them.

This module is near the bottom of the package: it imports nothing of ``dj_cqrs`` but
``constants`` and ``_logging``. What it needs from above (are there master / replica models,
which class must the transport subclass) is passed to ``validate()`` by ``dj_cqrs.apps``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from dj_cqrs import constants
from dj_cqrs._logging import logger


class CQRSConfigurationError(ImproperlyConfigured, AssertionError):
    """A wrong ``settings.CQRS``.

    Catchable as Django's ``ImproperlyConfigured`` and, like the original library's
    configuration errors, as ``AssertionError``.
    """


class TransportImportError(CQRSConfigurationError, ImportError):
    """``settings.CQRS['transport']`` cannot be imported (the original raises ``ImportError``)."""


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
    'management_url': None,
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
    'tombstone_ttl': constants.DEFAULT_REPLICA_TOMBSTONE_TTL,
    'queue_type': 'classic',
}

# The keys the original library writes into ``settings.CQRS`` at start-up.
FILLED_MASTER_KEYS = (
    'CQRS_AUTO_UPDATE_FIELDS',
    'CQRS_MESSAGE_TTL',
    'correlation_function',
    'meta_function',
)
FILLED_REPLICA_KEYS = ('CQRS_MAX_RETRIES', 'CQRS_RETRY_DELAY', 'delay_queue_max_size')

QUEUE_TYPES = ('classic', 'quorum')

SSL_OPTION_KEYS = ('ca_certs', 'certfile', 'keyfile', 'server_hostname', 'check_hostname')

_ALIASES = {('replica', 'CQRS_DELAY_QUEUE_MAX_SIZE'): 'delay_queue_max_size'}


class _Fallback(Exception):
    """The value is invalid; the original uses the default and logs ``warning``."""

    def __init__(self, warning: str) -> None:
        super().__init__(warning)
        self.warning = warning


def _error(name: str, expected: str, value: Any) -> CQRSConfigurationError:
    return CQRSConfigurationError(
        f'settings.{name} must be {expected}, not {type(value).__name__} ({value!r}).'
    )


# --- rules: (name, value) -> the value to use ------------------------------------------------


def _legacy_int(minimum: int, none: str, warning: str) -> Callable[[str, Any], Any]:
    """A number the original checks itself: an int (bool included) >= ``minimum``.

    Anything else falls back to the default with the original's ``warning``; ``none`` says
    whether None is kept (``'keep'``) or also falls back (``'fallback'``).
    """

    def rule(name: str, value: Any) -> Any:
        if value is None and none == 'keep':
            return None
        if isinstance(value, int) and value >= minimum:
            return int(value)
        raise _Fallback(warning)

    return rule


def _number(
    minimum: int, maximum: int | None = None, keep_float: bool = False
) -> Callable[[str, Any], Any]:
    """A number the original hands on unchecked: an int, a numeric string or a float.

    Strings and floats are converted as ``int()`` does (the original's libraries convert
    them); None means the default.
    """

    def rule(name: str, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise _error(name, 'a number', value) from None
        elif isinstance(value, float) and not keep_float:
            value = int(value)
        elif not isinstance(value, int | float):
            raise _error(name, 'a number', value)
        elif isinstance(value, bool):
            value = int(value)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f'between {minimum} and {maximum}' if maximum else f'at least {minimum}'
            raise CQRSConfigurationError(f'settings.{name} must be {bounds}, not {value!r}.')
        return value

    return rule


def _query_timeout(name: str, value: Any) -> int:
    """Milliseconds, converted as ``int()`` does; zero, negative or None: no timeout."""
    if value is None:
        return 0
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        raise _error(name, 'a number of milliseconds', value) from None


def _string(name: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _error(name, 'a string', value)


def _urls(name: str, value: Any) -> str | tuple[str, ...] | None:
    """One broker URL, several separated by ``;``, or a list / tuple of URLs (a tuple)."""
    if value is None or isinstance(value, str):
        if value and not broker_urls(value):
            raise CQRSConfigurationError(f'settings.{name} has no URL: {value!r}.')
        return value
    if not isinstance(value, list | tuple):
        # Not the value: it may hold credentials.
        raise CQRSConfigurationError(
            f'settings.{name} must be a URL string, URLs separated by ";" or a list of URLs, '
            f'not {type(value).__name__}.'
        )
    if not value:
        raise CQRSConfigurationError(f'settings.{name} must not be an empty list of URLs.')
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise CQRSConfigurationError(
                f'settings.{name} must be a list of URL strings; '
                f'item {item!r} ({type(item).__name__}) is not one.'
            )
    return tuple(value)


def broker_urls(url: str | Sequence[str] | None) -> list[str]:
    """The broker URLs of ``CQRS['url']`` in failover order (``[]`` when it is not set).

    A string may hold several URLs separated by ``;`` (Kombu's convention); a list or tuple
    holds one URL per item.
    """
    if not url:
        return []
    items = url.split(';') if isinstance(url, str) else url
    return [item.strip() for item in items if item.strip()]


def _queue_type(name: str, value: Any) -> str:
    if value in QUEUE_TYPES:
        return value
    raise CQRSConfigurationError(f"settings.{name} must be 'classic' or 'quorum', not {value!r}.")


def _optional_string(name: str, value: Any) -> str | None:
    """A string, or anything false for "not set"."""
    if not value:
        return None
    return _string(name, value)


def _strict_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _error(name, 'True or False', value)


def _bool_or_default(default: bool) -> Callable[[str, Any], bool]:
    def rule(name: str, value: Any) -> bool:
        return default if value is None else _strict_bool(name, value)

    return rule


def _truthy(name: str, value: Any) -> bool:
    return bool(value)


def _import(name: str, value: str) -> Any:
    try:
        return import_string(value)
    except ImportError as exc:
        raise CQRSConfigurationError(
            f'settings.{name} = {value!r} cannot be imported: {exc}'
        ) from exc


def _correlation_function(name: str, value: Any) -> Callable | None:
    """A callable or its dotted path; anything false means none."""
    if not value:
        return None
    if isinstance(value, str):
        value = _import(name, value)
    if not callable(value):
        raise _error(name, 'callable or a dotted path', value)
    return value


def _meta_function(name: str, value: Any) -> Callable | None:
    """A function (or its dotted path) that accepts ``**kwargs``; anything false means none."""
    if not value:
        return None
    if isinstance(value, str):
        value = _import(name, value)
    if not callable(value):
        raise _error(name, 'a function or a dotted path', value)
    try:
        parameters = inspect.signature(value).parameters.values()
    except (TypeError, ValueError):
        parameters = ()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise CQRSConfigurationError(f'settings.{name} must accept **kwargs.')
    return value


def _ssl_options(name: str, value: Any) -> dict | None:
    if value is None:
        return None
    unknown = sorted(set(value) - set(SSL_OPTION_KEYS)) if isinstance(value, dict) else None
    if unknown is None or unknown:
        raise CQRSConfigurationError(
            f'settings.{name} must be a dict with keys among {", ".join(SSL_OPTION_KEYS)}'
            + (f'; unknown: {", ".join(unknown)}.' if unknown else '.')
        )
    return value


def _management_url(name: str, value: Any) -> str | bool | None:
    """The RabbitMQ management API URL: a string, None (derived from the broker), or False."""
    if value is None or value is False:
        return value
    return _string(name, value)


_RULES: dict[tuple[str | None, str], Callable[[str, Any], Any]] = {
    (None, 'transport'): _string,
    (None, 'url'): _urls,
    (None, 'host'): _string,
    (None, 'port'): _number(1, 65535),
    (None, 'user'): _string,
    (None, 'password'): _string,
    (None, 'exchange'): _string,
    (None, 'consumer_prefetch_count'): _number(0),
    (None, 'publisher_confirms'): _bool_or_default(True),
    (None, 'ssl_options'): _ssl_options,
    (None, 'management_url'): _management_url,
    ('master', 'CQRS_AUTO_UPDATE_FIELDS'): _strict_bool,
    ('master', 'CQRS_MESSAGE_TTL'): _legacy_int(
        1, 'keep', 'Settings CQRS_MESSAGE_TTL=%s is invalid, using default %s.'
    ),
    ('master', 'correlation_function'): _correlation_function,
    ('master', 'meta_function'): _meta_function,
    ('master', 'outbox'): _bool_or_default(False),
    ('replica', 'CQRS_MAX_RETRIES'): _legacy_int(
        0, 'keep', 'Replica setting CQRS_MAX_RETRIES=%s is invalid, using default %s.'
    ),
    ('replica', 'CQRS_RETRY_DELAY'): _legacy_int(
        0, 'fallback', 'Replica setting CQRS_RETRY_DELAY=%s is invalid, using default %s.'
    ),
    ('replica', 'delay_queue_max_size'): _legacy_int(
        1, 'keep', 'Settings delay_queue_max_size=%s is invalid, using default %s.'
    ),
    ('replica', 'dead_letter_queue'): _string,
    ('replica', 'dead_message_ttl'): _number(0, keep_float=True),
    ('replica', 'CQRS_QUERY_TIMEOUT'): _query_timeout,
    ('replica', 'CQRS_LOG_TIMED_OUT_QUERIES'): _truthy,
    ('replica', 'CQRS_QUERY_LOGGER'): _optional_string,
    ('replica', 'tombstone_ttl'): _number(0, keep_float=True),
    ('replica', 'queue_type'): _queue_type,
}

# Keys where None in settings.CQRS stands for the default (the others keep None).
_NONE_IS_DEFAULT = {
    (None, 'exchange'),
    (None, 'consumer_prefetch_count'),
    ('replica', 'dead_letter_queue'),
    ('replica', 'queue_type'),
}


def _key_name(section: str | None, key: str) -> str:
    return f"CQRS['{section}']['{key}']" if section else f"CQRS['{key}']"


def _check_value(section: str | None, key: str, value: Any, default: Any, warn: bool) -> Any:
    """Return the value to use for one key, raising ``CQRSConfigurationError`` if it is wrong."""
    if value is None and (section, key) in _NONE_IS_DEFAULT:
        return default
    try:
        return _RULES[(section, key)](_key_name(section, key), value)
    except _Fallback as fallback:
        if warn:
            logger.warning(fallback.warning, value, default)
        return default


def _build_section(section: str | None, raw: Any, defaults: dict[str, Any], warn: bool):
    if not isinstance(raw, dict):
        where = f"settings.CQRS['{section}']" if section else 'settings.CQRS'
        raise CQRSConfigurationError(f'{where} must be a dict, not {type(raw).__name__}.')
    values = dict(defaults)
    for key, value in raw.items():
        key = _ALIASES.get((section, key), key)
        if key in defaults and (section, key) in _RULES:
            values[key] = _check_value(section, key, value, defaults[key], warn)
        elif not (section is None and key in ('master', 'replica')):
            values[key] = value
    return values


def _load(warn: bool = False) -> SimpleNamespace:
    raw = getattr(settings, 'CQRS', None)
    if raw is None:
        raw = {}
    common = _build_section(None, raw, COMMON_DEFAULTS, warn)
    master = _build_section('master', raw.get('master', {}), MASTER_DEFAULTS, warn)
    replica = _build_section('replica', raw.get('replica', {}), REPLICA_DEFAULTS, warn)
    if replica['dead_letter_queue'] is None and common['queue']:
        replica['dead_letter_queue'] = f'dead_letter_{common["queue"]}'
    return SimpleNamespace(
        **common,
        master=SimpleNamespace(**master),
        replica=SimpleNamespace(**replica),
    )


def _check_transport(path: Any, transport_base: type) -> None:
    if not path:
        raise CQRSConfigurationError(
            "settings.CQRS['transport'] is required: the dotted path of a transport class."
        )
    try:
        transport_cls = import_string(path)
    except ImportError as exc:
        raise TransportImportError(
            f"settings.CQRS['transport'] = {path!r} cannot be imported: {exc}"
        ) from exc
    if not (isinstance(transport_cls, type) and issubclass(transport_cls, transport_base)):
        raise CQRSConfigurationError(
            f"settings.CQRS['transport'] = {path!r} is not a subclass of "
            'dj_cqrs.transport.BaseTransport.'
        )


def _check_queue(queue: Any) -> None:
    if not queue:
        raise CQRSConfigurationError(
            "settings.CQRS['queue'] is required for replicas: the name of this service's queue."
        )
    if not isinstance(queue, str):
        raise _error("CQRS['queue']", 'a string', queue)


def _fill(section: dict, values: SimpleNamespace, keys: tuple[str, ...]) -> None:
    """Write defaults and replaced values into the user's section; equal values stay."""
    for key in keys:
        value = getattr(values, key)
        if key not in section or section[key] != value:
            section[key] = value


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

    def validate(self, *, has_masters: bool, has_replicas: bool, transport_base: type) -> None:
        """Check ``settings.CQRS`` at app start, as the original does, and fill in defaults.

        ``has_masters`` / ``has_replicas``: whether the project has master / replica models
        (nothing is checked without either); ``transport_base``: the class the configured
        transport must subclass. The ``master`` section is checked and filled when there are
        master models or the section is present, the ``replica`` section (and ``queue``)
        likewise. ``dj_cqrs.apps.validate_settings()`` passes the project's values.
        """
        if not (has_masters or has_replicas):
            return
        raw = getattr(settings, 'CQRS', None)
        if raw is None:
            raise CQRSConfigurationError('settings.CQRS is required by the CQRS models.')
        values = _load(warn=True)
        _check_transport(values.transport, transport_base)
        if has_replicas or 'replica' in raw:
            _check_queue(raw.get('queue'))
        if has_masters or 'master' in raw:
            _fill(raw.setdefault('master', {}), values.master, FILLED_MASTER_KEYS)
        if has_replicas or 'replica' in raw:
            _fill(raw.setdefault('replica', {}), values.replica, FILLED_REPLICA_KEYS)
        self._values = values


cqrs_settings = CQRSSettings()


def _reload_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting == 'CQRS':
        cqrs_settings.reload()


setting_changed.connect(_reload_on_change)
