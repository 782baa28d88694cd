"""The master side: this service owns these tables and publishes every committed change."""

from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models

from dj_cqrs.mixins import MasterMixin


class Publisher(MasterMixin, models.Model):
    """Published with the default serialization: every field, foreign keys as raw ids."""

    CQRS_ID = 'demo.publisher'

    name = models.CharField(max_length=100, unique=True)
    country = models.CharField(max_length=50, blank=True)

    class Meta:
        ordering = ['name']

    def __str__(self):
        return self.name


class Author(MasterMixin, models.Model):
    """Published through a DRF serializer that nests the author's publisher."""

    CQRS_ID = 'demo.author'
    CQRS_SERIALIZER = 'catalog.serializers.AuthorSerializer'

    name = models.CharField(max_length=100)
    publisher = models.ForeignKey(Publisher, on_delete=models.PROTECT, related_name='authors')

    class Meta:
        ordering = ['name']

    def __str__(self):
        return self.name

    @classmethod
    def relate_cqrs_serialization(cls, queryset):
        # The serializer reads author.publisher: fetch it in the same query.
        return queryset.select_related('publisher')


class Book(MasterMixin, models.Model):
    """Tracks title and price: each message carries their previous values when they change."""

    CQRS_ID = 'demo.book'
    CQRS_TRACKED_FIELDS = ['title', 'price']

    author = models.ForeignKey(Author, on_delete=models.PROTECT, related_name='books')
    title = models.CharField(max_length=200)
    price = models.DecimalField(
        max_digits=8, decimal_places=2, validators=[MinValueValidator(Decimal('0'))]
    )

    class Meta:
        ordering = ['id']

    def __str__(self):
        return self.title
