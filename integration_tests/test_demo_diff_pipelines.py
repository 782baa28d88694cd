"""The diff and deleted-diff pipelines of docs/commands.md, piped between real services.

``sh -c 'master | replica | master'`` and ``sh -c 'replica | master | replica'``: each stage
runs ``manage.py`` in its own service's directory with its own environment (database, broker
names), as three separate processes connected by real pipes.
"""

from __future__ import annotations

from integration_tests.conftest import books, seed_demo, wait_books_equal
from tests.harness import pipeline, wait_for

STALE_BEHIND_CQRS = """
import json
from django.db.models import F
from catalog.models import Book
changed = Book.objects.filter(pk__in=PKS).update(
    title='Changed without a message', cqrs_revision=F('cqrs_revision') + 1
)
print(json.dumps(changed))
"""


def test_diff_pipelines_repair_the_replica(demo):
    master = demo.master()
    replica = demo.replica()
    replica.start_consumer(workers=2)
    seeded = seed_demo(master, count=8)
    wait_books_equal(master, replica)
    gone_on_replica, stale, gone_on_master = (
        seeded['books'][0:2],
        seeded['books'][2:4],
        seeded['books'][4:6],
    )
    untouched = seeded['books'][6:]

    # behind CQRS: rows deleted on the replica, master rows updated without a message (the
    # replica's revision is then stale), rows deleted on the master without a DELETE
    marks = ','.join('?' * len(gone_on_replica))
    assert replica.execute(f'DELETE FROM replica_book WHERE id IN ({marks})', gone_on_replica) == 2
    code = STALE_BEHIND_CQRS.replace('PKS', repr(stale))
    assert master.shell(code) == 2
    marks = ','.join('?' * len(gone_on_master))
    assert master.execute(f'DELETE FROM catalog_book WHERE id IN ({marks})', gone_on_master) == 2
    before = books(replica)
    assert set(before) == set(stale + gone_on_master + untouched)
    assert all(before[pk]['cqrs_revision'] == 0 for pk in stale)

    # master | replica | master: SYNCs for the rows missing or stale on the replica
    result = pipeline(
        master.shell_command('cqrs_diff_master', '--cqrs-id', 'demo.book'),
        replica.shell_command('cqrs_diff_replica'),
        master.shell_command('cqrs_diff_sync', '-p'),
        check=True,
    )
    assert 'Traceback' not in result.stderr

    def repaired():
        rows = books(replica)
        return all(pk in rows for pk in gone_on_replica) and all(
            rows[pk]['cqrs_revision'] == 1 for pk in stale
        )

    wait_for(repaired, message=lambda: f'the SYNCs of the diff pipeline: {books(replica)}')
    rows = books(replica)
    master_rows = books(master)
    for pk in gone_on_replica + stale + untouched:
        assert rows[pk] == master_rows[pk]
    assert {rows[pk]['title'] for pk in stale} == {'Changed without a message'}
    # the diff does not remove rows deleted on the master
    assert all(pk in rows for pk in gone_on_master)

    # replica | master | replica: rows that no longer exist on the master are deleted
    result = pipeline(
        replica.shell_command('cqrs_deleted_diff_replica', '--cqrs-id', 'demo.book'),
        master.shell_command('cqrs_deleted_diff_master'),
        replica.shell_command('cqrs_deleted_sync_replica'),
        check=True,
    )
    assert 'Traceback' not in result.stderr
    assert books(replica) == books(master)
    assert sorted(books(replica)) == sorted(gone_on_replica + stale + untouched)
    assert replica.stop_consumer() == 0
