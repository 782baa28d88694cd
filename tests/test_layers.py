"""Issue 13, items 2 and 3: settings without transports, and modules that only import downwards.

The import contracts themselves are checked by ``lint-imports`` (``make lint``); these tests
prove the behaviour the layering relies on.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dj_cqrs.managers import ReplicaManager, _overrides
from tests.dj_replica.models import (
    FlakyReplica,
    HookKwargsReplica,
    NoDBReplica,
    SimplestReplica,
    TrackedReplica,
)

UPDATED = '2024-05-01 10:00:00+00:00'
ROOT = Path(__file__).resolve().parent.parent


def _row(pk, **fields):
    return {'id': pk, **fields, 'cqrs_revision': 0, 'cqrs_updated': UPDATED}


def _run(code):
    result = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, 'PYTHONPATH': str(ROOT), 'DJANGO_SETTINGS_MODULE': ''},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --- item 2: settings without transports ----------------------------------------------------


def test_item_02_settings_are_validated_without_importing_transports_or_registries():
    output = _run(
        """
        import sys
        from django.conf import settings

        settings.configure(CQRS={'transport': '__main__.Transport', 'queue': 'q'})

        class Base:
            pass

        class Transport(Base):
            pass

        from dj_cqrs.conf import CQRSConfigurationError, cqrs_settings

        cqrs_settings.validate(has_masters=True, has_replicas=True, transport_base=Base)
        settings.CQRS['transport'] = 'builtins.dict'
        cqrs_settings.reload()
        try:
            cqrs_settings.validate(has_masters=True, has_replicas=False, transport_base=Base)
        except CQRSConfigurationError as exc:
            print('rejected:', 'is not a subclass' in str(exc))
        loaded = sorted(m for m in sys.modules if m.startswith('dj_cqrs'))
        print('loaded:', ' '.join(loaded))
        """
    )
    assert output.splitlines() == [
        'rejected: True',
        'loaded: dj_cqrs dj_cqrs._logging dj_cqrs.conf dj_cqrs.constants',
    ]


def test_item_02_app_start_checks_the_transport_against_base_transport():
    """``dj_cqrs.apps`` hands conf the registries' verdict and ``BaseTransport``."""
    output = _run(
        """
        import django
        from django.conf import settings

        settings.configure(
            INSTALLED_APPS=['dj_cqrs'],
            DATABASES={'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}},
            CQRS={'transport': 'builtins.dict', 'queue': 'q'},
        )
        django.setup()
        from dj_cqrs.apps import validate_settings
        from dj_cqrs.conf import CQRSConfigurationError
        from dj_cqrs.registries import ReplicaRegistry

        validate_settings()
        print('no models: not checked')
        ReplicaRegistry.models['x'] = object
        try:
            validate_settings()
        except CQRSConfigurationError as exc:
            print(exc)
        """
    )
    assert output.splitlines() == [
        'no models: not checked',
        "settings.CQRS['transport'] = 'builtins.dict' is not a subclass of "
        'dj_cqrs.transport.BaseTransport.',
    ]


# --- item 3: managers know the default replica hooks without importing mixins --------------------


@pytest.mark.parametrize(
    ('model', 'hook', 'overridden'),
    [
        (SimplestReplica, 'cqrs_save', False),
        (SimplestReplica, 'cqrs_create', False),
        (TrackedReplica, 'cqrs_save', False),
        (TrackedReplica, 'cqrs_create', True),
        (NoDBReplica, 'cqrs_save', True),
        (FlakyReplica, 'cqrs_save', True),
        (HookKwargsReplica, 'cqrs_create', True),
    ],
)
def test_item_03_managers_tell_default_replica_hooks_from_overrides(model, hook, overridden):
    assert _overrides(model, hook) is overridden


@pytest.mark.django_db
def test_item_03_bulk_save_batches_default_hooks_and_calls_overrides_row_by_row(mocker):
    per_row = mocker.spy(ReplicaManager, 'save_instance')

    SimplestReplica.cqrs.bulk_save_instances([_row(1, name='a'), _row(2, name='b')])
    assert per_row.call_count == 0
    assert SimplestReplica.objects.count() == 2

    TrackedReplica.cqrs.bulk_save_instances([_row(1, name='a'), _row(2, name='b')])
    assert per_row.call_count == 2
    assert TrackedReplica.objects.count() == 2
