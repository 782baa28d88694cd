"""CRUD replication between the demo's master and replica services over RabbitMQ.

The master changes rows in ``manage.py shell -c`` processes; the replica's ``cqrs_consume -w 2``
applies them; the test reads both databases (SQLite or PostgreSQL).
"""

from __future__ import annotations

import json

from integration_tests.conftest import books, wait_books_equal
from tests.harness import wait_for

CREATE = """
import json
from decimal import Decimal
from catalog.models import Author, Book, Publisher
northwind = Publisher.objects.create(name='Northwind Press', country='UK')
heron = Publisher.objects.create(name='Blue Heron Books', country='US')
spare = Publisher.objects.create(name='Spare Imprint', country='CA')
ada = Author.objects.create(name='Ada Park', publisher=northwind)
ben = Author.objects.create(name='Ben Okafor', publisher=heron)
tides = Book.objects.create(title='Tides of Glass', author=ada, price=Decimal('14.90'))
lantern = Book.objects.create(title='The Lantern Road', author=ada, price=Decimal('22.50'))
bulk = Book.cqrs.bulk_create([
    Book(title='Paper Moons', author=ben, price=Decimal('9.99')),
    Book(title='Salt and Cedar', author=ben, price=Decimal('18.00')),
])
print(json.dumps({
    'publishers': [northwind.pk, heron.pk, spare.pk],
    'authors': [ada.pk, ben.pk],
    'books': [tides.pk, lantern.pk] + [book.pk for book in bulk],
}))
"""

UPDATE = """
import json
from decimal import Decimal
from django.db import transaction
from django.db.models import F
from catalog.models import Author, Book, Publisher
heron = Publisher.objects.get(name='Blue Heron Books')
heron.name = 'Blue Heron Editions'
heron.save()
ada = Author.objects.get(name='Ada Park')
ada.publisher = heron
ada.save()
tides = Book.objects.get(title='Tides of Glass')
tides.price = Decimal('15.90')
tides.save()
with transaction.atomic():
    lantern = Book.objects.get(title='The Lantern Road')
    lantern.title = 'The Lantern Road, Revised'
    lantern.save()
    lantern.price = Decimal('23.00')
    lantern.save()
raised = Book.cqrs.bulk_update(Book.objects.filter(author__name='Ben Okafor'), price=F('price') + 2)
print(json.dumps({'tides': tides.pk, 'lantern': lantern.pk, 'raised': raised}))
"""

DELETE = """
import json
from catalog.models import Book, Publisher
book = Book.objects.get(title='Paper Moons')
pk = book.pk
book.delete()
Publisher.objects.get(name='Spare Imprint').delete()
print(json.dumps({'book': pk}))
"""


def publishers(service):
    if service.queue is None:
        rows = service.records('SELECT id, name, country, cqrs_revision FROM catalog_publisher')
    else:
        rows = service.records(
            'SELECT id, publisher_name AS name, country, cqrs_revision FROM replica_publisher'
        )
    return {row['id']: row for row in rows}


def authors(service):
    table = 'catalog_author' if service.queue is None else 'replica_author'
    return service.rows(table, 'id, name, publisher_id, cqrs_revision, cqrs_updated')


def wait_replicated(master, replica):
    """Wait until every replicated table of the replica equals the master's."""
    for read in (publishers, authors):
        wait_for(
            lambda read=read: read(master) == read(replica),
            message=lambda read=read: (
                f'{read.__name__} to match\nmaster:  {read(master)}\nreplica: {read(replica)}\n'
                f'{replica.log_tail()}'
            ),
        )
    return wait_books_equal(master, replica)


def test_create_update_delete_reach_the_replica_database(demo):
    master = demo.master()
    replica = demo.replica()
    replica.start_consumer(workers=2)

    # create: save() and bulk_create, three models (CQRS_MAPPING, DRF serializer, tracked fields)
    created = master.shell(CREATE)
    replicated = wait_replicated(master, replica)
    assert sorted(replicated) == sorted(created['books'])
    assert set(publishers(replica)) == set(created['publishers'])
    northwind, heron, spare = created['publishers']
    assert publishers(replica)[northwind]['name'] == 'Northwind Press'
    ada, ben = created['authors']
    assert {pk: row['publisher_id'] for pk, row in authors(replica).items()} == {
        ada: northwind,
        ben: heron,
    }
    assert all(row['cqrs_revision'] == 0 for row in replicated.values())

    # update: save(), two saves in one transaction, Book.cqrs.bulk_update
    updated = master.shell(UPDATE)
    assert updated['raised'] == 2
    replicated = wait_replicated(master, replica)
    assert publishers(replica)[heron]['name'] == 'Blue Heron Editions'
    assert publishers(replica)[heron]['cqrs_revision'] == 1
    assert authors(replica)[ada]['publisher_id'] == heron
    lantern = replicated[updated['lantern']]
    assert (lantern['title'], lantern['cqrs_revision']) == ('The Lantern Road, Revised', 1)
    assert float(lantern['price']) == 23.0
    # the replica keeps the price before the last change, from the message's previous_data
    previous = replica.rows('replica_book', 'id, previous_price')
    assert float(previous[updated['tides']]['previous_price']) == 14.90
    assert sorted(float(row['price']) for row in books(replica).values())[-2:] == [20.0, 23.0]

    # delete
    deleted = master.shell(DELETE)
    wait_replicated(master, replica)
    assert deleted['book'] not in books(replica)
    assert spare not in publishers(replica)
    assert len(books(replica)) == 3

    # the replica's own JOIN query sees the replicated tables
    report = json.loads(replica.manage('demo_report').stdout)
    assert sorted(
        (row['publisher_name'], row['author_name'], row['title']) for row in report['books']
    ) == [
        ('Blue Heron Editions', 'Ada Park', 'The Lantern Road, Revised'),
        ('Blue Heron Editions', 'Ada Park', 'Tides of Glass'),
        ('Blue Heron Editions', 'Ben Okafor', 'Salt and Cedar'),
    ]

    assert replica.stop_consumer() == 0
