from django.conf import settings
from django.shortcuts import render

from replica.models import Author, Book, Publisher
from replica.queries import books_with_names, totals_per_publisher


def report(request):
    books = books_with_names()
    totals = totals_per_publisher()
    return render(
        request,
        'replica/report.html',
        {
            'books': books,
            'books_sql': str(books.query),
            'totals': totals,
            'totals_sql': str(totals.query),
            'counts': {
                'publishers': Publisher.objects.count(),
                'authors': Author.objects.count(),
                'books': Book.objects.count(),
            },
            'master_url': settings.DEMO_MASTER_URL,
        },
    )
