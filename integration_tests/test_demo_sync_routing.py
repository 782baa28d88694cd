"""Broadcast messages reach every replica service; ``cqrs_sync -q`` reaches only one.

Two demo replica services, each with its own queue and database, consume from one exchange.
"""

from __future__ import annotations

from integration_tests.conftest import books, seed_demo, wait_books_equal
from tests.harness import wait_for

RETITLE_BEHIND_CQRS = """
import json
from catalog.models import Book
changed = Book.objects.filter(pk__in=PKS).update(title='TITLE')
print(json.dumps(changed))
"""

MARKER = """
import json
from decimal import Decimal
from catalog.models import Author, Book
book = Book.objects.create(title='TITLE', author=Author.objects.get(), price=Decimal('1.00'))
print(json.dumps(book.pk))
"""

RENAME = """
import json
from catalog.models import Book
book = Book.objects.get(pk=PK)
book.title = 'TITLE'
book.save()
print(json.dumps(book.cqrs_revision))
"""


def titles(service) -> dict:
    return {pk: row['title'] for pk, row in books(service).items()}


def wait_titles(service, expected: dict) -> None:
    wait_for(
        lambda: {pk: titles(service).get(pk) for pk in expected} == expected,
        message=lambda: f'{service.name} titles {expected}; has {titles(service)}',
    )


def retitle_behind_cqrs(master, pks, title) -> None:
    """queryset.update(): the master's rows change, no message, no new revision."""
    code = RETITLE_BEHIND_CQRS.replace('PKS', repr(list(pks))).replace('TITLE', title)
    assert master.shell(code) == len(pks)


def test_broadcast_reaches_every_replica_and_direct_sync_only_one(demo, broker):
    master = demo.master()
    first, second = demo.replica('first'), demo.replica('second')
    # one worker each: a queue's messages are then applied in the order they were published
    for replica in (first, second):
        replica.start_consumer(workers=1)

    # broadcast: every save reaches both replica services
    seeded = seed_demo(master, count=3)
    for replica in (first, second):
        wait_books_equal(master, replica)
    pk = seeded['books'][0]
    revision = master.shell(RENAME.replace('PK', str(pk)).replace('TITLE', 'Saved title'))
    assert revision == 1
    for replica in (first, second):
        replica_books = wait_books_equal(master, replica)
        assert (replica_books[pk]['title'], replica_books[pk]['cqrs_revision']) == (
            'Saved title',
            1,
        )

    # a SYNC to the first queue only
    retitle_behind_cqrs(master, seeded['books'], 'Direct sync')
    master.manage('cqrs_sync', '--cqrs-id', 'demo.book', '-f', '{}', '-q', first.queue)
    wait_titles(first, dict.fromkeys(seeded['books'], 'Direct sync'))
    # a broadcast published after the SYNC: once the second replica applied it, a SYNC that
    # had wrongly gone to its queue too would have been applied before it
    marker = master.shell(MARKER.replace('TITLE', 'Marker'))
    for replica in (first, second):
        wait_titles(replica, {marker: 'Marker'})
    assert broker.queue_state(second.queue)[0] == 0
    assert set(titles(second).values()) == {'Saved title', 'Book 2', 'Book 3', 'Marker'}

    # a SYNC without -q: every replica
    retitle_behind_cqrs(master, seeded['books'], 'Broadcast sync')
    master.manage('cqrs_sync', '--cqrs-id', 'demo.book', '-f', '{}')
    for replica in (first, second):
        wait_titles(replica, dict.fromkeys(seeded['books'], 'Broadcast sync'))
        assert wait_books_equal(master, replica)[marker]['title'] == 'Marker'
