"""``cqrs_bulk_dump`` on the demo master, ``cqrs_bulk_load`` on the demo replica.

No consumer runs: the replica's rows come only from the dump, through a file or through a
pipe (``-o -`` into ``-i -``).
"""

from __future__ import annotations

from integration_tests.conftest import books, seed_demo
from tests.harness import pipeline

UPDATE = """
import json
from decimal import Decimal
from catalog.models import Book
changed = []
for book in Book.objects.order_by('pk')[:3]:
    book.price += Decimal('1.25')
    book.save()
    changed.append(book.pk)
print(json.dumps(changed))
"""


def test_bulk_dump_and_load_through_a_file_and_a_pipe(demo, tmp_path):
    master = demo.master()
    replica = demo.replica()
    seeded = seed_demo(master, count=30)
    assert books(replica) == {}

    # through a file
    dump = tmp_path / 'book.dump'
    master.manage('cqrs_bulk_dump', '--cqrs-id', 'demo.book', '-o', str(dump), '-b', '7')
    lines = dump.read_text().splitlines()
    assert lines[0] == 'demo.book'
    assert len(lines) == 31
    replica.manage('cqrs_bulk_load', '-i', str(dump), '-b', '8')
    assert books(replica) == books(master)
    assert sorted(books(replica)) == sorted(seeded['books'])

    # the replica drifts: a row deleted, a row that is not on the master, stale revisions
    first, second = seeded['books'][:2]
    replica.execute('DELETE FROM replica_book WHERE id = ?', (first,))
    replica.execute(
        'INSERT INTO replica_book (id, author_id, title, price, cqrs_revision, cqrs_updated, '
        "replicated_at) VALUES (100000, ?, 'Not on the master', 1, 0, '2020-01-01 00:00:00', "
        "'2020-01-01 00:00:00')",
        (seeded['author'],),
    )
    replica.execute(
        "UPDATE replica_book SET title = 'Edited on the replica' WHERE id = ?", (second,)
    )
    changed = master.shell(UPDATE)
    assert books(replica) != books(master)

    # through a pipe, clearing the replica table first (-p: the progress bar goes to stderr
    # and must not end up in the stream)
    pipeline(
        master.shell_command('cqrs_bulk_dump', '--cqrs-id', 'demo.book', '-o', '-', '-p'),
        replica.shell_command('cqrs_bulk_load', '-i', '-', '-c'),
        check=True,
    )
    replicated = books(replica)
    assert replicated == books(master)
    assert 100000 not in replicated
    assert replicated[second]['title'] == 'Book 2'
    assert {replicated[pk]['cqrs_revision'] for pk in changed} == {1}
