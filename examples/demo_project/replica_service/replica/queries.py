"""The read side's reason to exist: JOINs across replicated tables, without calling the master."""

from decimal import Decimal

from django.db.models import Count, DecimalField, F, Sum, Value
from django.db.models.functions import Coalesce

from replica.models import Book, Publisher


def books_with_names():
    """Every book with its author's and publisher's names (two JOINs)."""
    return (
        Book.objects.annotate(
            author_name=F('author__name'),
            publisher_name=F('author__publisher__publisher_name'),
        )
        .order_by('publisher_name', 'title')
        .values('id', 'title', 'price', 'previous_price', 'author_name', 'publisher_name')
    )


def totals_per_publisher():
    """Number of books and their total price per publisher (JOINs and GROUP BY)."""
    return (
        Publisher.objects.annotate(
            books=Count('authors__books'),
            total=Coalesce(
                Sum('authors__books__price'),
                Value(Decimal('0')),
                output_field=DecimalField(max_digits=12, decimal_places=2),
            ),
        )
        .order_by('publisher_name')
        .values('id', 'publisher_name', 'books', 'total')
    )
