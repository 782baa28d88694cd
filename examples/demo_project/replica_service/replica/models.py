"""The replica side: read-only copies of the master's tables, written only by ``cqrs_consume``.

Primary keys come from the master. Foreign keys between replicated tables have no database
constraint: messages of different models travel independently, so a book may arrive before
its author. ``replicated_at`` records when the consumer last wrote the row (for the lag
figures of ``run_demo.py``).
"""

from django.db import models

from dj_cqrs.mixins import ReplicaMixin


class Publisher(ReplicaMixin, models.Model):
    """CQRS_MAPPING renames the master's ``name`` to ``publisher_name`` here."""

    CQRS_ID = 'demo.publisher'
    CQRS_MAPPING = {'id': 'id', 'name': 'publisher_name', 'country': 'country'}

    id = models.BigIntegerField(primary_key=True)
    publisher_name = models.CharField(max_length=100)
    country = models.CharField(max_length=50, blank=True)
    replicated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return self.publisher_name


class Author(ReplicaMixin, models.Model):
    """The master sends ``{"publisher": {"id": .., "name": ..}}``; keep only the publisher id."""

    CQRS_ID = 'demo.author'
    CQRS_CUSTOM_SERIALIZATION = True

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=100)
    publisher = models.ForeignKey(
        Publisher, on_delete=models.DO_NOTHING, db_constraint=False, related_name='authors'
    )
    replicated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return self.name

    @staticmethod
    def fields_from_master(data):
        return {
            'name': data['name'],
            'publisher_id': data['publisher']['id'],
            'cqrs_revision': data['cqrs_revision'],
            'cqrs_updated': data['cqrs_updated'],
        }

    @classmethod
    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        return cls.objects.create(id=mapped_data['id'], **cls.fields_from_master(mapped_data))

    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        for name, value in self.fields_from_master(mapped_data).items():
            setattr(self, name, value)
        self.save()
        return self


class Book(ReplicaMixin, models.Model):
    """Keeps the price before the last price change, from the message's ``previous_data``."""

    CQRS_ID = 'demo.book'

    id = models.BigIntegerField(primary_key=True)
    author = models.ForeignKey(
        Author, on_delete=models.DO_NOTHING, db_constraint=False, related_name='books'
    )
    title = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    previous_price = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    replicated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return self.title

    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        # previous_data holds the old values of the tracked fields changed in this revision
        # (CQRS_TRACKED_FIELDS = ['title', 'price'] on the master); SYNCs carry none.
        if previous_data and previous_data.get('price') is not None:
            self.previous_price = previous_data['price']
        return super().cqrs_update(sync, mapped_data, previous_data=previous_data, meta=meta)
