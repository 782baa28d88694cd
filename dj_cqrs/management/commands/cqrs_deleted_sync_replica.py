"""``manage.py cqrs_deleted_sync_replica``: delete the replica rows printed by
``cqrs_deleted_diff_master`` (rows whose master row is gone)."""

from __future__ import annotations

from django.db import DatabaseError, router, transaction

from dj_cqrs import tombstones
from dj_cqrs.management.base import (
    CQRSCommand,
    input_stream,
    iter_json_lines,
    parse_header_datetime,
    parse_pk_list,
)
from dj_cqrs.registries import ReplicaRegistry

NAME = 'cqrs_deleted_sync_replica'


class Command(CQRSCommand):
    help = (
        'Read the output of cqrs_deleted_diff_master on stdin and delete those replica rows, '
        'except the ones updated after the diff started.'
    )
    registry = ReplicaRegistry
    stealth_options = ('stdin',)

    def handle(self, *args, **options):
        stream = input_stream(options)
        model, header = self.read_diff_header(stream, 2, NAME)
        cqrs_id, now = header
        started = parse_header_datetime(now)

        # Every line is checked before anything is deleted (the input is only the rows gone
        # from the master, so it is small).
        lines = []
        for number, value in iter_json_lines(stream, NAME):
            pks = parse_pk_list(model, value, NAME, number)
            if pks:
                lines.append(pks)

        using = router.db_for_write(model)
        manager = model._base_manager.db_manager(using)
        for pks in lines:
            try:
                with transaction.atomic(using=using):
                    doomed = manager.filter(pk__in=pks, cqrs_updated__lt=started)
                    if tombstones.enabled():
                        _delete_with_tombstones(model, using, doomed, started)
                    else:
                        doomed.delete()
            except DatabaseError as exc:
                # As in django-cqrs: the error on stderr, and on with the next line.
                self.stderr.write(str(exc))


def _delete_with_tombstones(model, using: str, doomed, started) -> None:
    """Delete the rows of ``doomed`` and leave their tombstones.

    The master's DELETE of these rows was not applied: the tombstone takes the revision that
    DELETE had at least (the row's + 1) and the start of the diff as ``cqrs_updated`` (the
    master row was already gone when the diff was taken after it).
    """
    found = list(doomed.select_for_update().values_list('pk', 'cqrs_revision'))
    if not found:
        return
    model._base_manager.db_manager(using).filter(pk__in=[pk for pk, _ in found]).delete()
    tombstones.record_deletions(
        model.CQRS_ID,
        using,
        {
            tombstones.key(model, pk): tombstones.mark(
                {'cqrs_revision': revision + 1, 'cqrs_updated': started}
            )
            for pk, revision in found
        },
    )
