"""Benchmark models: one master model, the same model without CQRS, and the replica."""

from django.db import models

from dj_cqrs.mixins import MasterMixin, ReplicaMixin


class BenchPlain(models.Model):
    """The master model's twin without CQRS (the baseline)."""

    name = models.CharField(max_length=200)
    value = models.IntegerField(default=0)
    cqrs_revision = models.IntegerField(default=0)
    cqrs_updated = models.DateTimeField(auto_now=True)


class BenchMaster(MasterMixin):
    CQRS_ID = 'bench'

    name = models.CharField(max_length=200)
    value = models.IntegerField(default=0)


class BenchReplica(ReplicaMixin):
    CQRS_ID = 'bench'

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    value = models.IntegerField(default=0)
