"""The public import paths of SPEC §2, constants, transport logging and the mock transport.

RabbitMQTransport, KombuTransport and the management commands are tested elsewhere.
"""

import importlib
import logging
from datetime import datetime, timezone

import pytest
from django.db.models.base import ModelBase
from django.dispatch import Signal
from django.utils import timezone as dj_timezone

from dj_cqrs.constants import ALL_BASIC_FIELDS, NO_QUEUE, SignalType
from dj_cqrs.transport.base import BaseTransport
from dj_cqrs.transport.loopback import LoopbackTransport
from dj_cqrs.transport.mixins import LoggingMixin
from dj_cqrs.transport.mock import TransportMock
from tests.dj_master.models import SimplestModel
from tests.dj_replica.models import SimplestReplica
from tests.harness import instance_data, payload

PUBLIC_NAMES = [
    ('dj_cqrs.mixins', 'MasterMixin'),
    ('dj_cqrs.mixins', 'RawMasterMixin'),
    ('dj_cqrs.mixins', 'ReplicaMixin'),
    ('dj_cqrs.mixins', 'RawReplicaMixin'),
    ('dj_cqrs.metas', 'MasterMeta'),
    ('dj_cqrs.metas', 'ReplicaMeta'),
    ('dj_cqrs.registries', 'MasterRegistry'),
    ('dj_cqrs.registries', 'ReplicaRegistry'),
    ('dj_cqrs.signals', 'MasterSignals'),
    ('dj_cqrs.signals', 'post_bulk_create'),
    ('dj_cqrs.signals', 'post_update'),
    ('dj_cqrs.managers', 'MasterManager'),
    ('dj_cqrs.managers', 'ReplicaManager'),
    ('dj_cqrs.dataclasses', 'TransportPayload'),
    ('dj_cqrs.constants', 'SignalType'),
    ('dj_cqrs.constants', 'ALL_BASIC_FIELDS'),
    ('dj_cqrs.constants', 'NO_QUEUE'),
    ('dj_cqrs.transport', 'BaseTransport'),
    ('dj_cqrs.transport', 'current_transport'),
    ('dj_cqrs.transport.mock', 'TransportMock'),
    ('dj_cqrs.transport.loopback', 'LoopbackTransport'),
    ('dj_cqrs.controller.consumer', 'consume'),
    ('dj_cqrs.controller.producer', 'produce'),
    ('dj_cqrs.transport.mixins', 'LoggingMixin'),
    ('dj_cqrs.admin_mixins', 'CQRSAdminMasterSyncMixin'),
    ('dj_cqrs.admin', 'CQRSAdminMasterSyncMixin'),
    ('dj_cqrs.utils', 'bulk_relate_cqrs_serialization'),
    ('dj_cqrs.apps', 'CQRSConfig'),
]

LOG_METHODS = [
    'log_produced',
    'log_consumed',
    'log_consumed_accepted',
    'log_consumed_denied',
    'log_consumed_failed',
    'log_delayed',
    'log_requeued',
    'log_dead_letter',
]


def test_public_import_paths_resolve():
    """Each public path of SPEC §2 exists (their kinds: the test below)."""
    missing = [
        f'{module}.{name}'
        for module, name in PUBLIC_NAMES
        if not hasattr(importlib.import_module(module), name)
    ]
    assert missing == []


def test_public_objects_have_the_expected_kind():
    from dj_cqrs import managers, metas, mixins, registries, signals
    from dj_cqrs.apps import CQRSConfig
    from dj_cqrs.transport import BaseTransport as ExportedBaseTransport

    assert isinstance(mixins.MasterMixin, metas.MasterMeta)
    assert isinstance(mixins.ReplicaMixin, metas.ReplicaMeta)
    assert not isinstance(mixins.RawMasterMixin, metas.MasterMeta)
    assert not isinstance(mixins.RawReplicaMixin, ModelBase)
    assert issubclass(metas.MasterMeta, ModelBase)
    assert callable(metas.MasterMeta.register)
    assert callable(metas.ReplicaMeta.register)
    assert isinstance(registries.MasterRegistry.models, dict)
    assert isinstance(registries.ReplicaRegistry.models, dict)
    assert isinstance(signals.post_bulk_create, Signal)
    assert isinstance(signals.post_update, Signal)
    assert isinstance(SimplestModel.cqrs, managers.MasterManager)
    assert isinstance(SimplestReplica.cqrs, managers.ReplicaManager)
    assert ExportedBaseTransport is BaseTransport
    assert issubclass(TransportMock, BaseTransport)
    assert issubclass(LoopbackTransport, BaseTransport)
    assert CQRSConfig.name == 'dj_cqrs'


def test_bulk_relate_cqrs_serialization_is_context_manager_and_decorator():
    from dj_cqrs.utils import bulk_relate_cqrs_serialization

    with bulk_relate_cqrs_serialization():
        pass

    @bulk_relate_cqrs_serialization()
    def decorated():
        return 'done'

    assert decorated() == 'done'


def test_signal_type_values():
    assert SignalType.SAVE == 'SAVE'
    assert SignalType.DELETE == 'DELETE'
    assert SignalType.SYNC == 'SYNC'


def test_constants():
    assert ALL_BASIC_FIELDS == '__all__'
    assert NO_QUEUE == 'None'


# --- LoggingMixin --------------------------------------------------------------------------


def _payload():
    return payload(
        SignalType.SAVE, 'logged_model', {'id': 98765}, correlation_id='corr-abc-123', retries=3
    )


def _call(mixin, method, payload):
    func = getattr(mixin, method)
    if method == 'log_delayed':
        return func(payload, 5, datetime(2030, 1, 1, tzinfo=timezone.utc))
    return func(payload)


@pytest.mark.parametrize('method', LOG_METHODS)
def test_logging_mixin_method_logs_one_record(method, cqrs_logs):
    _call(LoggingMixin, method, _payload())

    records = [r for r in cqrs_logs.records if r.name == 'django-cqrs']
    assert len(records) == 1
    message = records[0].getMessage()
    assert '98765' in message
    assert 'logged_model' in message
    assert 'corr-abc-123' in message


@pytest.mark.parametrize('method', LOG_METHODS)
def test_logging_mixin_methods_are_static(method):
    assert isinstance(LoggingMixin.__dict__[method], staticmethod)


def test_logging_mixin_methods_can_be_overridden():
    events = []

    class RecordingLogs(LoggingMixin):
        @staticmethod
        def log_produced(payload):
            events.append(('produced', payload.pk))

    RecordingLogs.log_produced(_payload())
    assert events == [('produced', 98765)]


def test_log_delayed_mentions_delay(cqrs_logs):
    LoggingMixin.log_delayed(_payload(), 5, datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert '5' in cqrs_logs.records[-1].getMessage()


# --- LoopbackTransport and BaseTransport -----------------------------------------------------


@pytest.mark.django_db
def test_loopback_transport_produce_applies_on_replica():
    data = instance_data(501, 0, str(dj_timezone.now()), name='from mock')
    result = LoopbackTransport.produce(payload(SignalType.SAVE, 'simplest', data))

    assert result
    replica = SimplestReplica.objects.get(pk=501)
    assert replica.name == 'from mock'
    assert replica.cqrs_revision == 0


@pytest.mark.django_db
def test_loopback_transport_produce_delete():
    SimplestReplica.objects.create(
        id=502, name='x', cqrs_revision=0, cqrs_updated=dj_timezone.now()
    )
    data = instance_data(502, 1, str(dj_timezone.now()))
    assert LoopbackTransport.produce(payload(SignalType.DELETE, 'simplest', data))
    assert not SimplestReplica.objects.filter(pk=502).exists()


def test_loopback_transport_consume_without_payload():
    assert LoopbackTransport.consume() is None


def test_base_transport_produce_not_implemented():
    with pytest.raises(NotImplementedError):
        BaseTransport.produce(_payload())


def test_base_transport_consume_not_implemented():
    with pytest.raises(NotImplementedError):
        BaseTransport.consume()


def test_base_transport_clean_connection_is_a_no_op():
    assert BaseTransport.clean_connection() is None


def test_logging_mixin_uses_django_cqrs_logger(cqrs_logs):
    LoggingMixin.log_produced(_payload())
    assert cqrs_logs.records[-1].name == 'django-cqrs'
    assert cqrs_logs.records[-1].levelno >= logging.INFO
