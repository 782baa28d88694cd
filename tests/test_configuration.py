"""Registration-time configuration errors of master and replica models (SPEC §3-4)."""

import logging
from contextlib import contextmanager

import pytest
from django.apps import apps
from django.db import models
from django.db.models import signals
from django.test import override_settings

from dj_cqrs.metas import MasterMeta, ReplicaMeta
from dj_cqrs.mixins import MasterMixin, RawReplicaMixin, ReplicaMixin
from dj_cqrs.registries import MasterRegistry, RegistryMixin, ReplicaRegistry
from dj_cqrs.signals import post_bulk_create, post_update

APP_LABELS = ('dj_master', 'dj_replica')


@contextmanager
def isolated_registries():
    """Snapshot both CQRS registries and Django's model registry; restore them afterwards."""
    master = dict(MasterRegistry.models)
    replica = dict(ReplicaRegistry.models)
    all_models = {label: dict(apps.all_models[label]) for label in APP_LABELS}
    try:
        yield
    finally:
        _restore(master, replica, all_models)


def _restore(master, replica, all_models):
    for model_cls in set(MasterRegistry.models.values()) - set(master.values()):
        uid = f'dj_cqrs.{model_cls._meta.label}'
        signals.post_save.disconnect(sender=model_cls, dispatch_uid=uid)
        signals.post_delete.disconnect(sender=model_cls, dispatch_uid=uid)
        post_bulk_create.disconnect(sender=model_cls, dispatch_uid=uid)
        post_update.disconnect(sender=model_cls, dispatch_uid=uid)
    MasterRegistry.models.clear()
    MasterRegistry.models.update(master)
    ReplicaRegistry.models.clear()
    ReplicaRegistry.models.update(replica)
    for label, snapshot in all_models.items():
        apps.all_models[label].clear()
        apps.all_models[label].update(snapshot)
    apps.clear_cache()


@pytest.fixture(autouse=True)
def restore_registries():
    with isolated_registries():
        yield


# --- sanity: the fixture and a valid model -------------------------------------------------


def test_valid_master_model_registers_and_is_cleaned_up():
    with isolated_registries():

        class CfgValidMaster(MasterMixin):
            CQRS_ID = 'cfg_valid_master'
            CQRS_FIELDS = ['id', 'name']
            CQRS_TRACKED_FIELDS = ['name']

            name = models.CharField(max_length=10)

            class Meta:
                app_label = 'dj_master'

        assert MasterRegistry.get_model_by_cqrs_id('cfg_valid_master') is CfgValidMaster
        assert apps.all_models['dj_master']['cfgvalidmaster'] is CfgValidMaster
        assert signals.post_save.has_listeners(CfgValidMaster)

    # What the autouse fixture relies on, checked here rather than by the next test's luck.
    assert 'cfg_valid_master' not in MasterRegistry.models
    assert 'cfgvalidmaster' not in apps.all_models['dj_master']
    assert not signals.post_save.has_listeners(CfgValidMaster)
    assert MasterRegistry.models['simplest'].__name__ == 'SimplestModel'


# --- master side ---------------------------------------------------------------------------


def test_master_missing_cqrs_id():
    with pytest.raises(AssertionError) as excinfo:

        class CfgNoIdMaster(MasterMixin):
            name = models.CharField(max_length=10)

            class Meta:
                app_label = 'dj_master'

    message = str(excinfo.value)
    assert 'CfgNoIdMaster' in message
    assert 'CQRS_ID' in message
    assert None not in MasterRegistry.models


def test_master_empty_cqrs_id():
    with pytest.raises(AssertionError) as excinfo:

        class CfgEmptyIdMaster(MasterMixin):
            CQRS_ID = ''

            class Meta:
                app_label = 'dj_master'

    assert 'CfgEmptyIdMaster' in str(excinfo.value)
    assert 'CQRS_ID' in str(excinfo.value)


def test_master_duplicate_cqrs_id_names_both_models():
    original = MasterRegistry.models['simplest']
    with pytest.raises(AssertionError) as excinfo:

        class CfgDuplicateMaster(MasterMixin):
            CQRS_ID = 'simplest'

            class Meta:
                app_label = 'dj_master'

    message = str(excinfo.value)
    assert 'CQRS_ID' in message
    assert 'simplest' in message
    assert 'CfgDuplicateMaster' in message
    assert 'tests.dj_master.models.SimplestModel' in message
    assert MasterRegistry.models['simplest'] is original


def test_master_cqrs_fields_unknown_name():
    with pytest.raises(AssertionError) as excinfo:

        class CfgUnknownFieldMaster(MasterMixin):
            CQRS_ID = 'cfg_unknown_field'
            CQRS_FIELDS = ['id', 'name', 'no_such_field']

            name = models.CharField(max_length=10)

            class Meta:
                app_label = 'dj_master'

    message = str(excinfo.value)
    assert 'CfgUnknownFieldMaster' in message
    assert 'CQRS_FIELDS' in message
    assert 'no_such_field' in message
    assert 'cfg_unknown_field' not in MasterRegistry.models


def test_master_cqrs_fields_duplicate_name():
    with pytest.raises(AssertionError) as excinfo:

        class CfgDupFieldMaster(MasterMixin):
            CQRS_ID = 'cfg_dup_field'
            CQRS_FIELDS = ['id', 'name', 'name']

            name = models.CharField(max_length=10)

            class Meta:
                app_label = 'dj_master'

    message = str(excinfo.value)
    assert 'CfgDupFieldMaster' in message
    assert 'CQRS_FIELDS' in message
    assert 'cfg_dup_field' not in MasterRegistry.models


def test_master_cqrs_fields_without_pk():
    with pytest.raises(AssertionError) as excinfo:

        class CfgNoPkFieldsMaster(MasterMixin):
            CQRS_ID = 'cfg_no_pk_fields'
            CQRS_FIELDS = ['name']

            name = models.CharField(max_length=10)

            class Meta:
                app_label = 'dj_master'

    message = str(excinfo.value)
    assert 'CfgNoPkFieldsMaster' in message
    assert 'CQRS_FIELDS' in message
    assert "'id'" in message
    assert 'cfg_no_pk_fields' not in MasterRegistry.models


def test_master_cqrs_fields_with_custom_pk_name():
    with pytest.raises(AssertionError) as excinfo:

        class CfgCustomPkMaster(MasterMixin):
            CQRS_ID = 'cfg_custom_pk'
            CQRS_FIELDS = ['id', 'name']

            code = models.CharField(max_length=10, primary_key=True)
            name = models.CharField(max_length=10)

            class Meta:
                app_label = 'dj_master'

    message = str(excinfo.value)
    assert 'CfgCustomPkMaster' in message
    assert 'CQRS_FIELDS' in message


def test_master_cqrs_fields_with_serializer():
    with pytest.raises(AssertionError) as excinfo:

        class CfgFieldsAndSerializerMaster(MasterMixin):
            CQRS_ID = 'cfg_fields_serializer'
            CQRS_FIELDS = ['id', 'name']
            CQRS_SERIALIZER = 'tests.dj_master.serializers.AuthorSerializer'

            name = models.CharField(max_length=10)

            class Meta:
                app_label = 'dj_master'

    message = str(excinfo.value)
    assert 'CfgFieldsAndSerializerMaster' in message
    assert 'CQRS_FIELDS' in message
    assert 'CQRS_SERIALIZER' in message
    assert 'cfg_fields_serializer' not in MasterRegistry.models


def test_master_serializer_alone_is_fine():
    class CfgSerializerOnlyMaster(MasterMixin):
        CQRS_ID = 'cfg_serializer_only'
        CQRS_SERIALIZER = 'tests.dj_master.serializers.AuthorSerializer'

        name = models.CharField(max_length=10)

        class Meta:
            app_label = 'dj_master'

    assert MasterRegistry.models['cfg_serializer_only'] is CfgSerializerOnlyMaster


def test_master_tracked_fields_unknown_field():
    with pytest.raises(AssertionError) as excinfo:

        class CfgBadTrackedMaster(MasterMixin):
            CQRS_ID = 'cfg_bad_tracked'
            CQRS_TRACKED_FIELDS = ['name', 'ghost']

            name = models.CharField(max_length=10)

            class Meta:
                app_label = 'dj_master'

    message = str(excinfo.value)
    assert 'CfgBadTrackedMaster' in message
    assert 'CQRS_TRACKED_FIELDS' in message
    assert 'ghost' in message
    assert 'cfg_bad_tracked' not in MasterRegistry.models


@pytest.mark.parametrize('value', ['name', 42, {'name': 'name'}])
def test_master_tracked_fields_not_a_list(value):
    # One unique class name per parameter, to avoid Django's re-registration warning.
    name = f'CfgTrackedNotList{type(value).__name__.capitalize()}Master'
    attrs = {
        '__module__': __name__,
        'CQRS_ID': f'cfg_tracked_not_list_{type(value).__name__}',
        'CQRS_TRACKED_FIELDS': value,
        'name': models.CharField(max_length=10),
        'Meta': type('Meta', (), {'app_label': 'dj_master'}),
    }
    with pytest.raises(AssertionError) as excinfo:
        type(MasterMixin)(name, (MasterMixin,), attrs)

    message = str(excinfo.value)
    assert name in message
    assert 'CQRS_TRACKED_FIELDS' in message
    assert attrs['CQRS_ID'] not in MasterRegistry.models


def test_master_tracked_fields_all_is_fine():
    class CfgTrackedAllMaster(MasterMixin):
        CQRS_ID = 'cfg_tracked_all'
        CQRS_TRACKED_FIELDS = '__all__'

        name = models.CharField(max_length=10)

        class Meta:
            app_label = 'dj_master'

    assert MasterRegistry.models['cfg_tracked_all'] is CfgTrackedAllMaster


def test_raw_master_register_checks_too():
    from dj_cqrs.mixins import RawMasterMixin

    class CfgRawNoIdMaster(RawMasterMixin):
        name = models.CharField(max_length=10)

        class Meta:
            app_label = 'dj_master'

    with pytest.raises(AssertionError) as excinfo:
        MasterMeta.register(CfgRawNoIdMaster)
    assert 'CfgRawNoIdMaster' in str(excinfo.value)
    assert 'CQRS_ID' in str(excinfo.value)


# --- replica side --------------------------------------------------------------------------


def test_replica_missing_cqrs_id():
    with pytest.raises(AssertionError) as excinfo:

        class CfgNoIdReplica(ReplicaMixin):
            id = models.IntegerField(primary_key=True)

            class Meta:
                app_label = 'dj_replica'

    assert 'CfgNoIdReplica' in str(excinfo.value)
    assert 'CQRS_ID' in str(excinfo.value)


def test_replica_duplicate_cqrs_id_names_both_models():
    original = ReplicaRegistry.models['simplest']
    with pytest.raises(AssertionError) as excinfo:

        class CfgDuplicateReplica(ReplicaMixin):
            CQRS_ID = 'simplest'

            id = models.IntegerField(primary_key=True)

            class Meta:
                app_label = 'dj_replica'

    message = str(excinfo.value)
    assert 'CQRS_ID' in message
    assert 'CfgDuplicateReplica' in message
    assert 'tests.dj_replica.models.SimplestReplica' in message
    assert ReplicaRegistry.models['simplest'] is original


def test_replica_mapping_to_unknown_field():
    with pytest.raises(AssertionError) as excinfo:

        class CfgBadMappingReplica(ReplicaMixin):
            CQRS_ID = 'cfg_bad_mapping'
            CQRS_MAPPING = {'id': 'id', 'name': 'missing_title'}

            id = models.IntegerField(primary_key=True)
            title = models.CharField(max_length=10)

            class Meta:
                app_label = 'dj_replica'

    message = str(excinfo.value)
    assert 'CfgBadMappingReplica' in message
    assert 'CQRS_MAPPING' in message
    assert 'missing_title' in message
    assert 'cfg_bad_mapping' not in ReplicaRegistry.models


def test_replica_mapping_without_pk():
    with pytest.raises(AssertionError) as excinfo:

        class CfgMappingNoPkReplica(ReplicaMixin):
            CQRS_ID = 'cfg_mapping_no_pk'
            CQRS_MAPPING = {'name': 'title'}

            remote_id = models.IntegerField(primary_key=True)
            title = models.CharField(max_length=10)

            class Meta:
                app_label = 'dj_replica'

    message = str(excinfo.value)
    assert 'CfgMappingNoPkReplica' in message
    assert 'CQRS_MAPPING' in message
    assert 'remote_id' in message
    assert 'cfg_mapping_no_pk' not in ReplicaRegistry.models


def test_replica_valid_mapping_registers():
    class CfgGoodMappingReplica(ReplicaMixin):
        CQRS_ID = 'cfg_good_mapping'
        CQRS_MAPPING = {'id': 'remote_id', 'name': 'title'}

        remote_id = models.IntegerField(primary_key=True)
        title = models.CharField(max_length=10)

        class Meta:
            app_label = 'dj_replica'

    assert ReplicaRegistry.models['cfg_good_mapping'] is CfgGoodMappingReplica


def test_replica_without_queue_setting():
    no_queue = {'transport': 'dj_cqrs.transport.mock.TransportMock'}
    with override_settings(CQRS=no_queue), pytest.raises(AssertionError) as excinfo:

        class CfgNoQueueReplica(ReplicaMixin):
            CQRS_ID = 'cfg_no_queue'

            id = models.IntegerField(primary_key=True)

            class Meta:
                app_label = 'dj_replica'

    message = str(excinfo.value)
    assert 'CfgNoQueueReplica' in message
    assert 'queue' in message
    assert 'cfg_no_queue' not in ReplicaRegistry.models


def test_raw_replica_without_queue_setting():
    class CfgRawNoQueueReplica(RawReplicaMixin):
        CQRS_ID = 'cfg_raw_no_queue'

    no_queue = {'transport': 'dj_cqrs.transport.mock.TransportMock'}
    with override_settings(CQRS=no_queue), pytest.raises(AssertionError) as excinfo:
        ReplicaMeta.register(CfgRawNoQueueReplica)
    assert 'CfgRawNoQueueReplica' in str(excinfo.value)
    assert 'queue' in str(excinfo.value)
    assert 'cfg_raw_no_queue' not in ReplicaRegistry.models


# --- registry look-up ----------------------------------------------------------------------


@pytest.mark.parametrize('registry', [MasterRegistry, ReplicaRegistry])
def test_get_model_by_unknown_cqrs_id_logs_and_returns_none(registry, caplog):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    assert registry.get_model_by_cqrs_id('no_such_cqrs_id') is None
    errors = [r for r in caplog.records if r.name == 'django-cqrs' and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert 'no_such_cqrs_id' in errors[0].getMessage()


def test_get_model_by_known_cqrs_id_logs_nothing(caplog):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    assert MasterRegistry.get_model_by_cqrs_id('simplest').__name__ == 'SimplestModel'
    assert ReplicaRegistry.get_model_by_cqrs_id('simplest').__name__ == 'SimplestReplica'
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_registries_are_separate():
    assert MasterRegistry.models is not ReplicaRegistry.models
    assert issubclass(MasterRegistry, RegistryMixin)
    assert issubclass(ReplicaRegistry, RegistryMixin)
