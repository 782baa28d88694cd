"""``manage.py demo_report``: the replica's JOIN queries as JSON (used by ``run_demo.py``)."""

import json
from decimal import Decimal

from django.core.management.base import BaseCommand
from django.core.serializers.json import DjangoJSONEncoder

from replica.queries import books_with_names, totals_per_publisher

CENTS = Decimal('0.01')


class Command(BaseCommand):
    help = 'Print the JOIN queries of the replica report as JSON.'

    def handle(self, *args, **options):
        books = books_with_names()
        totals = totals_per_publisher()
        report = {
            'books': list(books),
            'books_sql': str(books.query),
            # SQLite returns SUM() of decimals unrounded
            'totals': [{**row, 'total': row['total'].quantize(CENTS)} for row in totals],
            'totals_sql': str(totals.query),
        }
        self.stdout.write(json.dumps(report, cls=DjangoJSONEncoder))
