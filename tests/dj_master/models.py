"""Master models of the test project, one per behaviour under test."""

import uuid

from django.db import models
from mptt.models import MPTTModel, TreeForeignKey

from dj_cqrs.metas import MasterMeta
from dj_cqrs.mixins import MasterMixin, RawMasterMixin


class SimplestModel(MasterMixin):
    CQRS_ID = 'simplest'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200, null=True)


class AutoFieldsModel(MasterMixin):
    """Auto pk; every value type the default serialization converts."""

    CQRS_ID = 'auto_fields'

    name = models.CharField(max_length=200, default='')
    created_at = models.DateTimeField(null=True)
    birth_date = models.DateField(null=True)
    at_time = models.TimeField(null=True)
    token = models.UUIDField(null=True)
    amount = models.DecimalField(max_digits=10, decimal_places=2, null=True)
    ratio = models.FloatField(null=True)
    flag = models.BooleanField(default=False)


class FilteredModel(MasterMixin):
    CQRS_ID = 'filtered'
    CQRS_FIELDS = ['id', 'name']

    name = models.CharField(max_length=200)
    secret = models.CharField(max_length=200, default='hidden')


class UUIDPkModel(MasterMixin):
    CQRS_ID = 'uuid_pk'

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=200, default='')


class Publisher(models.Model):
    """Not replicated itself: nested into the author's message by the serializer."""

    name = models.CharField(max_length=200)


class Author(MasterMixin):
    CQRS_ID = 'author'
    CQRS_SERIALIZER = 'tests.dj_master.serializers.AuthorSerializer'

    name = models.CharField(max_length=200)
    publisher = models.ForeignKey(Publisher, null=True, on_delete=models.SET_NULL)

    @classmethod
    def relate_cqrs_serialization(cls, queryset):
        return queryset.select_related('publisher')


class TrackedParent(MasterMixin):
    CQRS_ID = 'tracked_parent'
    CQRS_TRACKED_FIELDS = '__all__'

    name = models.CharField(max_length=200)


class TrackedModel(MasterMixin):
    CQRS_ID = 'tracked'
    CQRS_TRACKED_FIELDS = ['name', 'parent', 'day']

    name = models.CharField(max_length=200, null=True)
    parent = models.ForeignKey(TrackedParent, null=True, on_delete=models.CASCADE)
    day = models.DateField(null=True)
    other = models.IntegerField(default=0)


class NoProduceModel(MasterMixin):
    CQRS_ID = 'no_produce'
    CQRS_PRODUCE = False

    name = models.CharField(max_length=200)


class SometimesSyncedModel(MasterMixin):
    """Only rows whose name does not start with 'private' are published."""

    CQRS_ID = 'sometimes'

    name = models.CharField(max_length=200)

    def is_sync_instance(self):
        return not self.name.startswith('private')


class MetaModel(MasterMixin):
    CQRS_ID = 'with_meta'

    name = models.CharField(max_length=200)

    def get_cqrs_meta(self, **kwargs):
        return {'model_meta': self.name, 'signal_type': kwargs['signal_type']}


class CustomDeleteModel(MasterMixin):
    CQRS_ID = 'custom_delete'

    name = models.CharField(max_length=200)

    def get_custom_cqrs_delete_data(self):
        return {'name': self.name}


class PlainBase(RawMasterMixin):
    """A concrete model with the raw mixin and no metaclass: registered only by its proxy."""

    CQRS_ID = 'plain_base'

    name = models.CharField(max_length=200)


class ProxyModel(PlainBase):
    CQRS_ID = 'proxy'

    class Meta:
        proxy = True


MasterMeta.register(ProxyModel)


class TreeModel(MPTTModel, RawMasterMixin):
    CQRS_ID = 'tree'
    CQRS_TRACKED_FIELDS = ['name', 'parent']

    name = models.CharField(max_length=200)
    parent = TreeForeignKey('self', null=True, blank=True, on_delete=models.CASCADE)


MasterMeta.register(TreeModel)


class FlakyModel(MasterMixin):
    """Its replica fails ``fail_times`` attempts (or every attempt) before applying."""

    CQRS_ID = 'flaky'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    fail_times = models.IntegerField(default=0)
    always_fail = models.BooleanField(default=False)


class TrackedAllModel(MasterMixin):
    """Every field tracked (``'__all__'``), a decimal, a serializer; no replica."""

    CQRS_ID = 'tracked_all'
    CQRS_TRACKED_FIELDS = '__all__'
    CQRS_SERIALIZER = 'tests.dj_master.serializers.TrackedAllSerializer'

    name = models.CharField(max_length=200, null=True)
    amount = models.DecimalField(max_digits=10, decimal_places=2, null=True)


class AllTypesModel(MasterMixin):
    """One column of every field type the rows of ``cqrs_sync`` / ``cqrs_bulk_dump`` are read
    without instances for (issue 10 item 2); no replica."""

    CQRS_ID = 'all_types'

    big = models.BigIntegerField(null=True)
    small = models.SmallIntegerField(null=True)
    positive = models.PositiveIntegerField(null=True)
    positive_small = models.PositiveSmallIntegerField(null=True)
    text = models.TextField(null=True)
    slug = models.SlugField(null=True)
    email = models.EmailField(null=True)
    url = models.URLField(null=True)
    ip = models.GenericIPAddressField(null=True)
    data = models.JSONField(null=True)
    created_at = models.DateTimeField(null=True)
    day = models.DateField(null=True)
    at_time = models.TimeField(null=True)
    token = models.UUIDField(null=True)
    amount = models.DecimalField(max_digits=12, decimal_places=4, null=True)
    ratio = models.FloatField(null=True)
    flag = models.BooleanField(null=True)
    parent = models.ForeignKey(TrackedParent, null=True, on_delete=models.SET_NULL)
    uuid_parent = models.ForeignKey(UUIDPkModel, null=True, on_delete=models.SET_NULL)
