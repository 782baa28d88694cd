"""``manage.py demo_scenario``: the scripted changes ``run_demo.py`` makes on the master.

Prints one line per step, then a JSON line ``{"last_commit": <unix time>, "deleted_books":
[ids]}``: the time of the last committed change, from which ``run_demo.py`` measures the
replication lag, and the books it deleted.

Steps are ``--pause`` seconds apart, like separate user requests. With several consumer
workers the messages of one row can be applied out of order: revisions make that harmless for
updates, but a DELETE overtaking the row's earlier SAVE would let that SAVE create the row
again. Rows deleted within milliseconds of their creation need a single worker (or tombstones).
"""

import json
import time
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import F

from catalog.models import Author, Book, Publisher
from dj_cqrs.transport import current_transport

PUBLISHERS = [('Northwind Press', 'UK'), ('Blue Heron Books', 'US'), ('Quarry & Quill', 'CA')]
# (name, index of the publisher)
AUTHORS = [
    ('Ada Park', 0),
    ('Ben Okafor', 0),
    ('Chloe Martin', 1),
    ('Dmitri Volkov', 1),
    ('Eun-ji Seo', 2),
]
# (title, index of the author, price)
BOOKS = [
    ('Tides of Glass', 0, '14.90'),
    ('The Lantern Road', 0, '22.50'),
    ('Paper Moons', 1, '9.99'),
    ('Salt and Cedar', 1, '18.00'),
    ('A Field Guide to Rain', 2, '27.40'),
    ('Winter Orchard', 2, '12.75'),
    ('Copper Sky', 3, '31.00'),
    ('The Quiet Engine', 3, '16.20'),
    ('Lines of Flight', 3, '24.99'),
    ('Harbour Lights', 4, '11.50'),
    ('Ink & Iron', 4, '19.95'),
    ('Small Hours', 4, '8.40'),
]


class Command(BaseCommand):
    help = 'Create, update and delete demo publishers, authors and books (empty database only).'

    def add_arguments(self, parser):
        parser.add_argument(
            '--pause', type=float, default=0.5, help='Seconds between two steps (0.5).'
        )

    def handle(self, *args, **options):
        self.pause = options['pause']
        if Publisher.objects.exists() or Book.objects.exists():
            raise CommandError('demo_scenario expects an empty master database.')

        publishers = [Publisher.objects.create(name=n, country=c) for n, c in PUBLISHERS]
        authors = [Author.objects.create(name=n, publisher=publishers[p]) for n, p in AUTHORS]
        single = [
            Book.objects.create(title=t, author=authors[a], price=Decimal(p))
            for t, a, p in BOOKS[:8]
        ]
        bulk = Book.cqrs.bulk_create(
            [Book(title=t, author=authors[a], price=Decimal(p)) for t, a, p in BOOKS[8:]]
        )
        books = single + bulk
        self.step(
            f'created {len(publishers)} publishers, {len(authors)} authors, {len(books)} books '
            f'({len(single)} with save(), {len(bulk)} with Book.cqrs.bulk_create)'
        )

        self.wait()
        # Later steps work on freshly loaded rows, as separate requests would.
        books = list(Book.objects.filter(pk__in=[book.pk for book in books]).order_by('pk'))
        for book, price in ((books[0], '15.90'), (books[3], '21.00'), (books[9], '10.25')):
            book.price = Decimal(price)
            book.save()
        self.step(f'changed the price of books #{books[0].id}, #{books[3].id}, #{books[9].id}')

        self.wait()
        books[5].title = 'Winter Orchard (2nd ed.)'
        books[5].save()
        self.step(f'renamed book #{books[5].id} (title is tracked too)')

        self.wait()
        with transaction.atomic():
            books[7].title = 'The Quiet Engine, Revised'
            books[7].save()
            books[7].price = Decimal('17.80')
            books[7].save()
        self.step(f'saved book #{books[7].id} twice in one transaction: one revision, one message')

        self.wait()
        publishers[2].name = 'Quarry & Quill Editions'
        publishers[2].save()
        authors[2].publisher = publishers[2]
        authors[2].save()
        self.step(
            f'renamed publisher #{publishers[2].id} to "{publishers[2].name}"; '
            f'moved author #{authors[2].id} to it'
        )

        self.wait()
        deleted = [books[2].id, books[10].id]
        for book in (books[2], books[10]):
            book.delete()
        self.step(f'deleted books #{deleted[0]} and #{deleted[1]}')

        self.wait()
        raised = Book.cqrs.bulk_update(
            Book.objects.filter(author__publisher=publishers[0]), price=F('price') + Decimal('2')
        )
        last_commit = time.time()
        self.step(f'Book.cqrs.bulk_update: +2.00 on the {raised} books of {publishers[0].name}')

        if not current_transport.flush():
            raise CommandError('The broker did not confirm every message.')
        self.stdout.write(json.dumps({'last_commit': last_commit, 'deleted_books': deleted}))

    def step(self, text):
        self.stdout.write(f'  - {text}')
        self.stdout.flush()

    def wait(self):
        time.sleep(self.pause)
