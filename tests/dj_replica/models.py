"""Replica models of the test project, fed by the master models through the transport."""

from django.db import models

from dj_cqrs.metas import ReplicaMeta
from dj_cqrs.mixins import RawReplicaMixin, ReplicaMixin

# What the replica hooks were called with, for tests that assert on previous_data / meta.
RECORDED: list[dict] = []


def record(**kwargs):
    RECORDED.append(kwargs)


class SimplestReplica(ReplicaMixin):
    CQRS_ID = 'simplest'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200, null=True)


class AutoFieldsReplica(ReplicaMixin):
    CQRS_ID = 'auto_fields'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(null=True)
    birth_date = models.DateField(null=True)
    at_time = models.TimeField(null=True)
    token = models.UUIDField(null=True)
    amount = models.DecimalField(max_digits=10, decimal_places=2, null=True)
    ratio = models.FloatField(null=True)
    flag = models.BooleanField()


class MappedReplica(ReplicaMixin):
    """Receives 'filtered' under other column names."""

    CQRS_ID = 'filtered'
    CQRS_MAPPING = {'id': 'remote_id', 'name': 'title'}

    remote_id = models.IntegerField(primary_key=True)
    title = models.CharField(max_length=200)


class UUIDReplica(ReplicaMixin):
    CQRS_ID = 'uuid_pk'

    id = models.UUIDField(primary_key=True)
    name = models.CharField(max_length=200)


class PublisherReplica(models.Model):
    name = models.CharField(max_length=200)


class AuthorReplica(ReplicaMixin):
    """Custom serialization: the nested publisher becomes a row of its own."""

    CQRS_ID = 'author'
    CQRS_CUSTOM_SERIALIZATION = True

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    publisher = models.ForeignKey(PublisherReplica, null=True, on_delete=models.SET_NULL)

    @staticmethod
    def _publisher(data):
        if not data:
            return None
        publisher, _ = PublisherReplica.objects.update_or_create(
            id=data['id'], defaults={'name': data['name']}
        )
        return publisher

    @classmethod
    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        return cls.objects.create(
            id=mapped_data['id'],
            name=mapped_data['name'],
            publisher=cls._publisher(mapped_data['publisher']),
            cqrs_revision=mapped_data['cqrs_revision'],
            cqrs_updated=mapped_data['cqrs_updated'],
        )

    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        self.name = mapped_data['name']
        self.publisher = self._publisher(mapped_data['publisher'])
        self.cqrs_revision = mapped_data['cqrs_revision']
        self.cqrs_updated = mapped_data['cqrs_updated']
        self.save()
        return self


class TrackedParentReplica(ReplicaMixin):
    CQRS_ID = 'tracked_parent'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)


class TrackedReplica(ReplicaMixin):
    CQRS_ID = 'tracked'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200, null=True)
    parent_id = models.IntegerField(null=True)
    day = models.DateField(null=True)
    other = models.IntegerField(default=0)

    @classmethod
    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        record(cqrs_id=cls.CQRS_ID, previous_data=previous_data, sync=sync)
        return super().cqrs_create(sync, mapped_data, previous_data, meta)

    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        record(cqrs_id=self.CQRS_ID, previous_data=previous_data, sync=sync)
        return super().cqrs_update(sync, mapped_data, previous_data, meta)


class MetaReplica(ReplicaMixin):
    CQRS_ID = 'with_meta'
    CQRS_META = True

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)

    @classmethod
    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        record(cqrs_id=cls.CQRS_ID, meta=meta)
        return super().cqrs_create(sync, mapped_data, previous_data, meta)

    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        record(cqrs_id=self.CQRS_ID, meta=meta)
        return super().cqrs_update(sync, mapped_data, previous_data, meta)

    @classmethod
    def cqrs_delete(cls, master_data, meta=None):
        record(cqrs_id=cls.CQRS_ID, meta=meta, deleted=master_data['id'])
        return super().cqrs_delete(master_data, meta)


class CustomDeleteReplica(ReplicaMixin):
    CQRS_ID = 'custom_delete'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)

    @classmethod
    def cqrs_delete(cls, master_data, meta=None):
        record(cqrs_id=cls.CQRS_ID, custom=master_data.get('custom'))
        return super().cqrs_delete(master_data, meta)


class SometimesReplica(ReplicaMixin):
    CQRS_ID = 'sometimes'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)


class ProxyReplica(ReplicaMixin):
    CQRS_ID = 'proxy'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)


class TreeReplica(ReplicaMixin):
    CQRS_ID = 'tree'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    parent_id = models.IntegerField(null=True)

    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        record(cqrs_id=self.CQRS_ID, previous_data=previous_data)
        return super().cqrs_update(sync, mapped_data, previous_data, meta)


class LockedReplica(ReplicaMixin):
    """Row lookups with select_for_update ('locked' has no master model: tests send to it)."""

    CQRS_ID = 'locked'
    CQRS_SELECT_FOR_UPDATE = True

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)


class DirectSyncsReplica(ReplicaMixin):
    CQRS_ID = 'direct_syncs'
    CQRS_ONLY_DIRECT_SYNCS = True

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)


class NoDBReplica(ReplicaMixin):
    """Never touches its table: the hooks only record what they received."""

    CQRS_ID = 'no_db'
    CQRS_NO_DB_OPERATIONS = True

    id = models.IntegerField(primary_key=True)

    @classmethod
    def cqrs_save(cls, master_data, previous_data=None, sync=False, meta=None):
        record(cqrs_id=cls.CQRS_ID, saved=master_data, sync=sync)
        return True

    @classmethod
    def cqrs_delete(cls, master_data, meta=None):
        record(cqrs_id=cls.CQRS_ID, deleted=master_data['id'])
        return True


class RawReplica(RawReplicaMixin):
    """Not a Django model: keeps what it receives in a dict."""

    CQRS_ID = 'raw'
    CQRS_META = True
    STORE: dict = {}

    @classmethod
    def cqrs_save(cls, master_data, previous_data=None, sync=False, meta=None):
        cls.STORE[master_data['id']] = {'data': master_data, 'sync': sync, 'meta': meta}
        return True

    @classmethod
    def cqrs_delete(cls, master_data, meta=None):
        return cls.STORE.pop(master_data['id'], None) is not None


ReplicaMeta.register(RawReplica)


class FlakyAttempt(models.Model):
    """How many times the flaky replica was asked to apply each pk."""

    id = models.IntegerField(primary_key=True)
    attempts = models.IntegerField(default=0)


class FlakyReplica(ReplicaMixin):
    """Fails (falsy result) ``fail_times`` times per pk, or always, then applies."""

    CQRS_ID = 'flaky'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    fail_times = models.IntegerField(default=0)
    always_fail = models.BooleanField(default=False)

    @classmethod
    def cqrs_save(cls, master_data, previous_data=None, sync=False, meta=None):
        attempt, _ = FlakyAttempt.objects.get_or_create(id=master_data['id'])
        attempt.attempts = models.F('attempts') + 1
        attempt.save()
        attempt.refresh_from_db()
        if master_data.get('always_fail') or attempt.attempts <= master_data.get('fail_times', 0):
            return None
        return super().cqrs_save(master_data, previous_data, sync, meta)


# --- issue 9, replica side: models written as against django-cqrs ----------------------------


class AbstractHandlerReplica(ReplicaMixin):
    """Item 12: an abstract, table-less handler registered under its CQRS_ID."""

    CQRS_ID = 'abstract_handler'
    CQRS_NO_DB_OPERATIONS = True

    class Meta:
        abstract = True

    @classmethod
    def cqrs_save(cls, master_data, **kwargs):
        record(cqrs_id=cls.CQRS_ID, hook='cqrs_save', data=master_data, kwargs=kwargs)
        return True

    @classmethod
    def cqrs_delete(cls, master_data, **kwargs):
        record(cqrs_id=cls.CQRS_ID, hook='cqrs_delete', data=master_data, kwargs=kwargs)
        return True


class NoDBWithoutHooksReplica(ReplicaMixin):
    """Item 13: CQRS_NO_DB_OPERATIONS without its own cqrs_save / cqrs_delete."""

    CQRS_ID = 'no_db_without_hooks'
    CQRS_NO_DB_OPERATIONS = True

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200, null=True)


class HookTarget(models.Model):
    id = models.IntegerField(primary_key=True)


class _RecordingHooks:
    """Records the arguments of every replica hook, then does the default work."""

    @classmethod
    def cqrs_save(cls, master_data, **kwargs):
        record(hook='cqrs_save', kwargs=kwargs)
        return super().cqrs_save(master_data, **kwargs)

    @classmethod
    def cqrs_create(cls, sync, mapped_data, **kwargs):
        record(hook='cqrs_create', sync=sync, mapped_data=dict(mapped_data), kwargs=kwargs)
        return super().cqrs_create(sync, mapped_data, **kwargs)

    def cqrs_update(self, sync, mapped_data, **kwargs):
        record(hook='cqrs_update', sync=sync, mapped_data=dict(mapped_data), kwargs=kwargs)
        return super().cqrs_update(sync, mapped_data, **kwargs)

    @classmethod
    def cqrs_delete(cls, master_data, **kwargs):
        record(hook='cqrs_delete', kwargs=kwargs)
        return super().cqrs_delete(master_data, **kwargs)


class HookKwargsReplica(_RecordingHooks, ReplicaMixin):
    """Items 14-16: a mapped replica with a foreign key, recording its hooks' arguments."""

    CQRS_ID = 'hook_kwargs'
    CQRS_MAPPING = {'id': 'id', 'name': 'title', 'parent': 'target'}

    id = models.IntegerField(primary_key=True)
    title = models.CharField(max_length=200, null=True)
    target = models.ForeignKey(
        HookTarget, null=True, on_delete=models.DO_NOTHING, db_constraint=False
    )


class HookKwargsMetaReplica(_RecordingHooks, ReplicaMixin):
    """Item 14 with CQRS_META: ``meta`` is passed to every hook."""

    CQRS_ID = 'hook_kwargs_meta'
    CQRS_META = True

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200, null=True)
    target = models.ForeignKey(
        HookTarget, null=True, on_delete=models.DO_NOTHING, db_constraint=False
    )


class DBErrorReplica(ReplicaMixin):
    """Item 17: the first ``fail_times`` applications of a pk raise a database error.

    The attempts are counted in the process (a database counter would roll back with the
    failure).
    """

    CQRS_ID = 'db_error'
    ATTEMPTS: dict = {}

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    fail_times = models.IntegerField(default=0)

    @classmethod
    def cqrs_save(cls, master_data, previous_data=None, sync=False, meta=None):
        from django.db import DatabaseError

        attempts = cls.ATTEMPTS[master_data['id']] = cls.ATTEMPTS.get(master_data['id'], 0) + 1
        result = super().cqrs_save(master_data, previous_data, sync, meta)
        if attempts <= master_data.get('fail_times', 0):
            raise DatabaseError(f'forced database error, attempt {attempts}')
        return result


class PlainFKReplica(ReplicaMixin):
    """Item 15: a foreign key applied by the default create / update (and the bulk load)."""

    CQRS_ID = 'plain_fk'

    id = models.IntegerField(primary_key=True)
    target = models.ForeignKey(
        HookTarget,
        null=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name='plain_fk_replicas',
    )
