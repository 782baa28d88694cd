"""The ``cqrs`` managers: bulk publishing on the master, applying messages on the replica."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import Error, IntegrityError, connections, router, transaction
from django.db.models import F, Manager, Model, QuerySet, signals
from django.utils import timezone

from dj_cqrs import metrics, tombstones
from dj_cqrs._logging import logger
from dj_cqrs.constants import FIELDS_TRACKER_FIELD_NAME, SignalType
from dj_cqrs.logger import log_timed_out_queries
from dj_cqrs.utils import get_json_valid_value

_CHUNK = 1000


class MasterManager(Manager):
    """``Model.cqrs``: bulk operations that publish every row they touch."""

    def bulk_create(self, objs: Any, **kwargs: Any) -> list:
        """``bulk_create`` that publishes a SAVE for every created object.

        The objects need their primary keys after the insert: a database returning them
        (PostgreSQL, SQLite, MariaDB) or pks set by the caller. Tracked fields are sent as for
        a created instance: ``None`` for every tracked field that has a value.
        """
        objs = list(objs)
        for obj in objs:
            obj.cqrs_revision = 0
            obj._save_tracked_fields()
        using = self.db
        with transaction.atomic(using=using, savepoint=False):
            created = super().bulk_create(objs, **kwargs)
            if created:
                if self.model.CQRS_TRACKED_FIELDS:
                    for obj in created:
                        getattr(obj, FIELDS_TRACKER_FIELD_NAME).set_saved_fields()
                self.model.call_post_bulk_create(created, using=using)
        return created

    def bulk_update(self, queryset: QuerySet, **kwargs: Any) -> int:
        """Update ``queryset`` with ``kwargs``, bump revisions and publish every updated row.

        Each row is sent with the previous values of all its tracked fields (changed or not).
        """
        model = queryset.model
        using = queryset.db or router.db_for_write(model)
        tracker = (
            getattr(model, FIELDS_TRACKER_FIELD_NAME, None) if model.CQRS_TRACKED_FIELDS else None
        )
        tracked = sorted(tracker.fields) if tracker is not None else []
        with transaction.atomic(using=using, savepoint=False):
            if tracked:
                before = {row.pop('pk'): row for row in queryset.values('pk', *tracked)}
                pks = list(before)
            else:
                before = {}
                pks = list(queryset.values_list('pk', flat=True))
            now = timezone.now()
            updated = 0
            base = model._default_manager.using(using)
            chunks = [pks[start : start + _CHUNK] for start in range(0, len(pks), _CHUNK)]
            for chunk in chunks:
                updated += base.filter(pk__in=chunk).update(
                    cqrs_revision=F('cqrs_revision') + 1, cqrs_updated=now, **kwargs
                )
            instances = [instance for chunk in chunks for instance in base.filter(pk__in=chunk)]
            if tracked:
                for instance in instances:
                    old = before.get(instance.pk, {})
                    instance.set_cqrs_tracked_fields_data(
                        {name: get_json_valid_value(old.get(name)) for name in tracked}
                    )
            model.call_post_update(instances, using=using)
        return updated


class ReplicaManager(Manager):
    """``Model.cqrs`` of a replica: applies SAVE / SYNC / DELETE data with the revision rules."""

    def save_instance(
        self,
        master_data: dict,
        previous_data: dict | None = None,
        sync: bool = False,
        meta: dict | None = None,
    ) -> Any:
        """Create or update the row described by ``master_data``; falsy when not applied.

        ``previous_data`` is mapped like the data (``CQRS_MAPPING`` names, model fields only)
        before it reaches ``cqrs_create`` / ``cqrs_update``; empty previous data is None.
        Data of a deleted row that is not newer than its tombstone is dropped (True, no hook
        called); creating the row again removes the tombstone.
        """
        mapped_data = self._map_save_data(master_data)
        if mapped_data is None:
            return None
        mapped_previous_data = self._map_previous_data(previous_data) if previous_data else None
        pk_value = mapped_data[self._pk_key(mapped_data)]
        if tombstones.enabled():
            tombstones.lock(self.model, self._write_db, [pk_value])
        queryset = self.model._default_manager.using(self._write_db).filter(pk=pk_value)
        if self.model.CQRS_SELECT_FOR_UPDATE:
            queryset = queryset.select_for_update()
        instance = queryset.first()
        if instance is not None:
            return self.update_instance(instance, mapped_data, mapped_previous_data, sync, meta)
        if not tombstones.enabled():
            return self.create_instance(mapped_data, mapped_previous_data, sync, meta)
        cqrs_id, using = self.model.CQRS_ID, self._write_db
        key = tombstones.key(self.model, pk_value)
        tombstone = tombstones.load(cqrs_id, using, [key]).get(key)
        if tombstone is not None:
            new = tombstones.mark(mapped_data)
            if tombstones.is_stale(new, tombstone):
                _log_deleted(pk_value, mapped_data, tombstone, cqrs_id)
                metrics.note_stale(cqrs_id, _signal_type(sync))
                return True
        created = self.create_instance(mapped_data, mapped_previous_data, sync, meta)
        if created and tombstone is not None:
            tombstones.remove(cqrs_id, using, [key])
        return created

    def model_field_values(self, mapped_data: dict) -> dict:
        """``mapped_data`` as model keyword arguments: foreign keys given as a primary key
        value (``author=1``) are set through their attname (``author_id=1``)."""
        relations = self._relation_attnames
        if not relations:
            return mapped_data
        values = {}
        for name, value in mapped_data.items():
            related = relations.get(name)
            if related is not None and not isinstance(value, related[1]):
                values[related[0]] = value
            else:
                values[name] = value
        return values

    @property
    def _relation_attnames(self) -> dict[str, tuple[str, type]]:
        model = self.model
        cached = model.__dict__.get('_cqrs_relation_attnames')
        if cached is None:
            cached = {
                f.name: (f.attname, f.related_model)
                for f in model._meta.concrete_fields
                if f.is_relation and f.attname != f.name
            }
            model._cqrs_relation_attnames = cached
        return cached

    def bulk_save_instances(self, rows: list[dict], sync: bool = False) -> list:
        """Apply many SAVE (or SYNC) rows with one lookup query and one insert for new rows.

        Gives the same results as ``cqrs_save`` row by row; models that override
        ``cqrs_save`` or ``cqrs_create`` are applied row by row.
        """
        model = self.model
        if (
            _overrides(model, 'cqrs_save')
            or _overrides(model, 'cqrs_create')
            or model.save is not Model.save
            or signals.pre_save.has_listeners(model)
            or signals.post_save.has_listeners(model)
        ):
            if sync:
                return [model.cqrs_save(row, sync=True) for row in rows]
            return [model.cqrs_save(row) for row in rows]
        results: list[Any] = [None] * len(rows)
        pk_field = model._meta.pk
        mapped_rows: list[tuple[int, Any, dict]] = []
        for index, row in enumerate(rows):
            mapped = self._map_save_data(row)
            if mapped is None:
                continue
            try:
                pk_value = pk_field.to_python(mapped[self._pk_key(mapped)])
            except ValidationError as exc:
                logger.error('CQRS bad primary key (%s): %s', model.CQRS_ID, exc)
                continue
            mapped_rows.append((index, pk_value, mapped))
        pks = list({pk for _, pk, _ in mapped_rows})
        if tombstones.enabled():
            tombstones.lock(model, self._write_db, pks)
        queryset = model._default_manager.using(self._write_db)
        if model.CQRS_SELECT_FOR_UPDATE:
            queryset = queryset.select_for_update()
        existing = {}
        for start in range(0, len(pks), 500):
            existing.update(
                (obj.pk, obj) for obj in queryset.filter(pk__in=pks[start : start + 500])
            )
        new_rows: dict[Any, tuple[int, dict]] = {}
        later: list[tuple[int, dict]] = []
        for index, pk_value, mapped in mapped_rows:
            if pk_value in existing:
                results[index] = self.update_instance(existing[pk_value], mapped, sync=sync)
            elif pk_value in new_rows:
                later.append((index, mapped))
            else:
                new_rows[pk_value] = (index, mapped)
        buried = self._drop_buried_rows(new_rows, results) if new_rows else []
        if new_rows:
            objs = [model(**self.model_field_values(mapped)) for _, mapped in new_rows.values()]
            try:
                with transaction.atomic(using=self._write_db):
                    model._default_manager.using(self._write_db).bulk_create(objs)
                    if buried:
                        tombstones.remove(model.CQRS_ID, self._write_db, buried)
                for (index, _), obj in zip(new_rows.values(), objs, strict=True):
                    results[index] = obj
            except (Error, ValidationError):
                for index, mapped in new_rows.values():
                    results[index] = self.save_instance(mapped, sync=sync)
        for index, mapped in later:
            results[index] = self.save_instance(mapped, sync=sync)
        return results

    def _drop_buried_rows(self, new_rows: dict[Any, tuple[int, dict]], results: list) -> list:
        """Drop from ``new_rows`` the rows their tombstone makes stale (their result: True);
        return the tombstone keys of the other rows that have one (one query)."""
        if not tombstones.enabled():
            return []
        model = self.model
        keys = {pk: tombstones.key(model, pk) for pk in new_rows}
        found = tombstones.load(model.CQRS_ID, self._write_db, keys.values())
        buried = []
        for pk, key in keys.items():
            tombstone = found.get(key)
            if tombstone is None:
                continue
            index, mapped = new_rows[pk]
            if tombstones.is_stale(tombstones.mark(mapped), tombstone):
                _log_deleted(pk, mapped, tombstone, model.CQRS_ID)
                results[index] = True
                del new_rows[pk]
            else:
                buried.append(key)
        return buried

    def apply_batch(self, messages: list[tuple[bool, dict, bool]]) -> list[Any]:
        """Apply ``(is_delete, data, sync)`` messages in order with bulk statements.

        The results and the log lines are those of ``cqrs_save`` / ``cqrs_delete`` called once
        per message in the same order: the revision rules are decided in memory from one
        lookup query, then the rows are written with one DELETE, one INSERT and one UPDATE
        (per chunk). The log lines are emitted once the writes succeeded. Anything these
        statements cannot reproduce exactly raises: the caller rolls back and applies the
        messages one by one. Only for models that ``batch_kind`` accepts.

        Tombstones: one more query loads those of the pks deleted in the batch or absent from
        the table, and one statement each writes the new ones and removes the cleared ones.
        """
        model = self.model
        pk_field = model._meta.pk
        revision_field = model._meta.get_field('cqrs_revision')
        log = _DeferredLog()
        stale: list[bool] = []  # the sync flag of each message found stale
        results: list[Any] = [None] * len(messages)
        plan: list[tuple[int, bool, Any, dict, bool]] = []
        for index, (is_delete, data, sync) in enumerate(messages):
            log.index = index
            if is_delete:
                if 'id' not in data:
                    _log_pk_error(model.CQRS_ID, log)
                    results[index] = False
                    continue
                if not _has_cqrs_fields(data, model.CQRS_ID, log):
                    results[index] = False
                    continue
                raw_pk = data['id']
                mapped = data
            else:
                mapped = self._map_save_data(data, log)
                if mapped is None:
                    continue
                raw_pk = mapped[self._pk_key(mapped)]
            if raw_pk is None:
                raise _NotBatchable('a primary key is None')
            plan.append((index, is_delete, pk_field.to_python(raw_pk), mapped, sync))

        using = self._write_db
        queryset = model._default_manager.using(using)
        if model.CQRS_SELECT_FOR_UPDATE:
            queryset = queryset.select_for_update().order_by('pk')
        pks = list(dict.fromkeys(pk for _, _, pk, _, _ in plan))
        buried = tombstones.enabled()
        if buried:
            tombstones.lock(model, using, pks)
        rows: dict[Any, _BatchRow] = {pk: _BatchRow() for pk in pks}
        for start in range(0, len(pks), _CHUNK):
            for obj in queryset.filter(pk__in=pks[start : start + _CHUNK]):
                row = rows.get(obj.pk)
                if row is None:
                    raise _NotBatchable(f'pk {obj.pk!r} is not one of the looked-up values')
                row.obj, row.stored, row.revision = obj, True, obj.cqrs_revision
        if buried:
            self._load_batch_tombstones(plan, rows)

        for index, is_delete, pk, mapped, sync in plan:
            log.index = index
            row = rows[pk]
            if is_delete:
                if row.obj is not None and row.stored:
                    row.delete = True
                row.obj = None
                if buried:
                    row.tombstone = tombstones.merge(row.tombstone, tombstones.mark(mapped))
                    row.tombstone_changed = row.tombstone is not None
                results[index] = True
                continue
            if row.obj is None and row.tombstone is not None:
                if tombstones.is_stale(tombstones.mark(mapped), row.tombstone):
                    _log_deleted(pk, mapped, row.tombstone, model.CQRS_ID, log)
                    stale.append(sync)
                    results[index] = True
                    continue
                row.tombstone, row.tombstone_changed = None, True
            values = self.model_field_values(mapped)
            revision = revision_field.to_python(mapped['cqrs_revision'])
            if row.obj is None:
                row.obj, row.stored, row.revision = model(**values), False, revision
                results[index] = row.obj
                continue
            pk_value = row.obj.pk if row.stored else pk
            new = mapped['cqrs_revision']
            if _revision_allows_update(pk_value, new, row.revision, sync, model.CQRS_ID, log):
                for name, value in values.items():
                    setattr(row.obj, name, value)
                row.revision = revision
                row.changed = row.stored
            else:
                stale.append(sync)
            results[index] = row.obj

        self._write_batch(using, rows.items())
        if buried:
            self._write_batch_tombstones(using, rows.items())
        log.replay()
        for sync in stale:
            metrics.note_stale(model.CQRS_ID, _signal_type(sync))
        return results

    def _load_batch_tombstones(self, plan: list, rows: dict) -> None:
        """Read the tombstones of the pks a batch deletes or does not find (one query)."""
        model = self.model
        keys = {}
        for _, is_delete, pk, _, _ in plan:
            row = rows[pk]
            if pk not in keys and (is_delete or not row.stored):
                keys[pk] = row.key = tombstones.key(model, pk)
        if keys:
            found = tombstones.load(model.CQRS_ID, self._write_db, keys.values())
            for pk, key in keys.items():
                row = rows[pk]
                row.tombstone = found.get(key)
                row.tombstone_stored = row.tombstone is not None

    def _write_batch_tombstones(self, using: str, rows: Any) -> None:
        cqrs_id = self.model.CQRS_ID
        written, cleared = {}, []
        for _, row in rows:
            if not row.tombstone_changed:
                continue
            if row.tombstone is not None:
                written[row.key] = row.tombstone
            elif row.tombstone_stored:
                cleared.append(row.key)
        if cleared:
            tombstones.remove(cqrs_id, using, cleared)
        tombstones.store(cqrs_id, using, written)

    def _write_batch(self, using: str, rows: Any) -> None:
        model = self.model
        manager = model._default_manager.using(using)
        deleted, created, updated = [], [], []
        for pk, row in rows:
            if row.delete:
                deleted.append(pk)
            if row.obj is not None and not row.stored:
                created.append(row.obj)
            elif row.changed and row.obj is not None:
                updated.append(row.obj)
        for start in range(0, len(deleted), _CHUNK):
            manager.filter(pk__in=deleted[start : start + _CHUNK]).delete()
        if created:
            manager.bulk_create(created, batch_size=_CHUNK)
        if updated:
            self._update_rows(using, updated)

    def _update_rows(self, using: str, objs: list) -> None:
        """Write ``objs`` back as ``save()`` would: every concrete field, ``pre_save`` applied;
        one UPDATE statement run with the parameters of every row (``executemany``)."""
        meta = self.model._meta
        connection = connections[using]
        fields = [
            f
            for f in meta.concrete_fields
            if not f.primary_key and not getattr(f, 'generated', False)
        ]
        if any(hasattr(f, 'get_placeholder') for f in fields):
            for obj in objs:
                for field in fields:
                    field.pre_save(obj, False)
            self.model._default_manager.using(using).bulk_update(
                objs, [f.name for f in fields], batch_size=_CHUNK
            )
            return
        quote = connection.ops.quote_name
        sql = 'UPDATE {} SET {} WHERE {} = %s'.format(
            quote(meta.db_table),
            ', '.join(f'{quote(f.column)} = %s' for f in fields),
            quote(meta.pk.column),
        )
        params = [
            [f.get_db_prep_save(f.pre_save(obj, False), connection) for f in fields]
            + [meta.pk.get_db_prep_save(obj.pk, connection)]
            for obj in objs
        ]
        with connection.cursor() as cursor:
            cursor.executemany(sql, params)

    def create_instance(
        self,
        mapped_data: dict,
        previous_data: dict | None = None,
        sync: bool = False,
        meta: dict | None = None,
    ) -> Any:
        """Create the row through ``cqrs_create``; errors are logged, the result is None."""
        pk_value = mapped_data[self._pk_key(mapped_data)]
        try:
            with transaction.atomic(using=self._write_db):
                return self.model.cqrs_create(
                    sync, mapped_data, **self._hook_kwargs(previous_data, meta)
                )
        except (Error, ValidationError) as exc:
            log_timed_out_queries(exc, self.model, self._write_db)
            if isinstance(exc, IntegrityError):
                logger.warning(
                    'Potentially wrong CQRS sync order: pk = %s, cqrs_revision = %s (%s).',
                    pk_value,
                    mapped_data['cqrs_revision'],
                    self.model.CQRS_ID,
                )
            logger.error('%s\nCQRS create error: pk = %s (%s).', exc, pk_value, self.model.CQRS_ID)
            return None

    def update_instance(
        self,
        instance: Any,
        mapped_data: dict,
        previous_data: dict | None = None,
        sync: bool = False,
        meta: dict | None = None,
    ) -> Any:
        """Update ``instance`` unless the revision rules say the data is old or a duplicate."""
        pk_value = instance.pk
        cqrs_id = self.model.CQRS_ID
        new = mapped_data['cqrs_revision']
        if not _revision_allows_update(pk_value, new, instance.cqrs_revision, sync, cqrs_id):
            metrics.note_stale(cqrs_id, _signal_type(sync))
            return instance
        try:
            with transaction.atomic(using=self._write_db):
                return instance.cqrs_update(
                    sync, mapped_data, **self._hook_kwargs(previous_data, meta)
                )
        except (Error, ValidationError) as exc:
            log_timed_out_queries(exc, self.model, self._write_db)
            logger.error(
                '%s\nCQRS update error: pk = %s, cqrs_revision = %s (%s).',
                exc,
                pk_value,
                new,
                cqrs_id,
            )
            return None

    def delete_instance(self, master_data: dict) -> bool:
        """Delete the row with pk ``master_data['id']``; True even when nothing was there.

        The deletion leaves a tombstone (in the same transaction) unless they are off.
        """
        if 'id' not in master_data:
            _log_pk_error(self.model.CQRS_ID)
            return False
        if not _has_cqrs_fields(master_data, self.model.CQRS_ID):
            return False
        using = self._write_db
        buried = tombstones.enabled()
        try:
            with transaction.atomic(using=using):
                if buried:
                    tombstones.lock(self.model, using, [master_data['id']])
                self.model._default_manager.using(using).filter(pk=master_data['id']).delete()
                if buried:
                    key = tombstones.key(self.model, master_data['id'])
                    tombstones.record_deletions(
                        self.model.CQRS_ID, using, {key: tombstones.mark(master_data)}
                    )
        except Error as exc:
            logger.error(
                '%s\nCQRS delete error: pk = %s (%s).', exc, master_data['id'], self.model.CQRS_ID
            )
            return False
        return True

    @property
    def _write_db(self) -> str:
        return self._db or router.db_for_write(self.model)

    def _hook_kwargs(self, previous_data: dict | None, meta: dict | None) -> dict:
        kwargs: dict[str, Any] = {'previous_data': previous_data}
        if self.model.CQRS_META:
            kwargs['meta'] = meta
        return kwargs

    def _pk_key(self, mapped_data: dict) -> str:
        pk = self.model._meta.pk
        return pk.name if pk.name in mapped_data else pk.attname

    def _map_save_data(self, master_data: dict, log: Any = logger) -> dict | None:
        model = self.model
        if not _has_cqrs_fields(master_data, model.CQRS_ID, log):
            return None
        mapped = self._make_initial_mapping(master_data, log)
        if mapped is None:
            return None
        pk = model._meta.pk
        if pk.name not in mapped and pk.attname not in mapped:
            _log_pk_error(model.CQRS_ID, log)
            return None
        if model.CQRS_CUSTOM_SERIALIZATION:
            return mapped
        mapped = self._remove_excessive_data(mapped)
        if not self._all_required_fields_are_filled(mapped, log):
            return None
        return mapped

    def _make_initial_mapping(self, master_data: dict, log: Any = logger) -> dict | None:
        mapping = self.model.CQRS_MAPPING
        if not mapping:
            return dict(master_data)
        mapped = {
            'cqrs_revision': master_data['cqrs_revision'],
            'cqrs_updated': master_data['cqrs_updated'],
        }
        for master_name, replica_name in mapping.items():
            if master_name not in master_data:
                log.error(
                    'Bad master-replica mapping for %s (%s).', master_name, self.model.CQRS_ID
                )
                return None
            mapped[replica_name] = master_data[master_name]
        return mapped

    def _map_previous_data(self, previous_data: dict) -> dict:
        mapping = self.model.CQRS_MAPPING
        if not mapping:
            return previous_data
        mapped = {
            replica_name: previous_data[master_name]
            for master_name, replica_name in mapping.items()
            if master_name in previous_data
        }
        return self._remove_excessive_data(mapped)

    def _remove_excessive_data(self, data: dict) -> dict:
        """Only the model's fields, under the name they have in ``data`` (field name first)."""
        result = {}
        for field in self.model._meta.concrete_fields:
            if field.name in data:
                result[field.name] = data[field.name]
            elif field.attname in data:
                result[field.attname] = data[field.attname]
        return result

    def _all_required_fields_are_filled(self, mapped_data: dict, log: Any = logger) -> bool:
        missing = [
            field.name
            for field in self.model._meta.concrete_fields
            if not (field.null or field.has_default() or getattr(field, 'auto_now', False))
            and not field.primary_key
            and field.name not in mapped_data
            and field.attname not in mapped_data
        ]
        if missing:
            log.error(
                'Not all required CQRS fields are provided in data (%s). Missing: %s.',
                self.model.CQRS_ID,
                ', '.join(missing),
            )
            return False
        return True


class _NotBatchable(Exception):
    """A batch the bulk statements cannot apply exactly as the per-message path would."""


class _BatchRow:
    """The state of one primary key while a batch is decided in memory."""

    __slots__ = (
        'obj',
        'stored',
        'revision',
        'changed',
        'delete',
        'key',
        'tombstone',
        'tombstone_stored',
        'tombstone_changed',
    )

    def __init__(self) -> None:
        self.obj: Any = None  # the row as it is after the messages seen so far (None: absent)
        self.stored = False  # ``obj`` is the row read from the database
        self.revision: Any = None
        self.changed = False  # the stored row was updated
        self.delete = False  # the stored row is deleted (maybe created again afterwards)
        self.key = ''  # the tombstone's ``instance_pk`` (set when tombstones are read)
        self.tombstone: tombstones.Mark | None = None  # after the messages seen so far
        self.tombstone_stored = False  # a tombstone was read from the database
        self.tombstone_changed = False


class _DeferredLog:
    """Log calls kept with the index of their message and emitted in message order."""

    def __init__(self) -> None:
        self.index = 0
        self.calls: list[tuple[int, Any, tuple]] = []

    def error(self, *args: Any) -> None:
        self.calls.append((self.index, logger.error, args))

    def warning(self, *args: Any) -> None:
        self.calls.append((self.index, logger.warning, args))

    def replay(self) -> None:
        for _, method, args in sorted(self.calls, key=lambda call: call[0]):
            method(*args)


_ROW_SIGNALS = (
    signals.pre_init,
    signals.post_init,
    signals.pre_save,
    signals.post_save,
    signals.pre_delete,
    signals.post_delete,
)
_MANAGER_METHODS = (
    'save_instance',
    'create_instance',
    'update_instance',
    'delete_instance',
    'model_field_values',
    '_map_save_data',
)


def batch_kind(model: type) -> str | None:
    """How the consumer may apply a batch of messages of replica ``model``.

    None: one by one through the hooks (the model overrides a ``cqrs_*`` hook or ``save()``,
    has signal receivers, sets ``CQRS_NO_DB_OPERATIONS``, has a custom ``cqrs`` manager or
    default manager ``create()``, inherits a concrete model or relates to itself).
    ``'isolated'``: in bulk, and the model has no relation to any other model, so its batch
    may be applied out of turn with other models' messages. ``'related'``: in bulk, in turn.
    """
    if not issubclass(model, Model):
        return None
    meta = model._meta
    if (
        model.CQRS_NO_DB_OPERATIONS
        or meta.abstract
        or any(
            _overrides(model, hook)
            for hook in ('cqrs_save', 'cqrs_create', 'cqrs_update', 'cqrs_delete')
        )
        or model.save is not Model.save
        or any(link is not None for link in meta.parents.values())
    ):
        return None
    manager = getattr(model, 'cqrs', None)
    if not isinstance(manager, ReplicaManager) or any(
        getattr(type(manager), name) is not getattr(ReplicaManager, name)
        for name in _MANAGER_METHODS
    ):
        return None
    default = model._default_manager
    if type(default).create is not Manager.create or default._queryset_class.create is not (
        QuerySet.create
    ):
        return None
    if any(signal.has_listeners(model) for signal in _ROW_SIGNALS):
        return None
    relations = [f for f in meta.get_fields(include_hidden=True) if f.is_relation]
    if any(f.related_model in (model, meta.concrete_model) for f in relations):
        return None
    return 'related' if relations else 'isolated'


# The class whose replica hooks are the defaults (named, not imported: ``dj_cqrs.mixins``
# imports this module).
_DEFAULT_HOOKS_OWNER = ('dj_cqrs.mixins', 'ReplicaMixin')


def _overrides(model: type, name: str) -> bool:
    """Whether ``model`` (or a base between it and ``ReplicaMixin``) defines hook ``name``."""
    owner = next(klass for klass in model.__mro__ if name in vars(klass))
    return (owner.__module__, owner.__qualname__) != _DEFAULT_HOOKS_OWNER


def _revision_allows_update(
    pk_value: Any, new: Any, existing: Any, sync: bool, cqrs_id: str, log: Any = logger
) -> bool:
    """Whether data of revision ``new`` updates a row at revision ``existing`` (and the log
    lines of the verdict): a SYNC always does, a SAVE only when it is newer."""
    if sync:
        if existing > new:
            log.warning(
                'CQRS revision downgrade on sync: pk = %s, cqrs_revision = new %s / '
                'existing %s (%s).',
                pk_value,
                new,
                existing,
                cqrs_id,
            )
        return True
    if existing > new:
        log.error(
            'Wrong CQRS sync order: pk = %s, cqrs_revision = new %s / existing %s (%s).',
            pk_value,
            new,
            existing,
            cqrs_id,
        )
        return False
    if existing == new:
        log.error(
            'Received duplicate CQRS data: pk = %s, cqrs_revision = %s (%s).',
            pk_value,
            new,
            cqrs_id,
        )
        if new == 0:
            log.warning('CQRS potential creation race condition: pk = %s (%s).', pk_value, cqrs_id)
        return False
    if new != existing + 1:
        log.warning(
            'Lost or filtered out %s CQRS packages: pk = %s, cqrs_revision = %s (%s)',
            new - existing - 1,
            pk_value,
            new,
            cqrs_id,
        )
    return True


def _signal_type(sync: bool) -> str:
    return SignalType.SYNC if sync else SignalType.SAVE


def _has_cqrs_fields(master_data: dict, cqrs_id: str, log: Any = logger) -> bool:
    if 'cqrs_revision' in master_data and 'cqrs_updated' in master_data:
        return True
    log.error('CQRS sync fields are not provided in data (%s).', cqrs_id)
    return False


def _log_pk_error(cqrs_id: str, log: Any = logger) -> None:
    log.error('CQRS PK is not provided in data (%s).', cqrs_id)


def _log_deleted(
    pk_value: Any, data: dict, tombstone: tombstones.Mark, cqrs_id: str, log: Any = logger
) -> None:
    log.error(
        'CQRS data of a deleted instance is dropped: pk = %s, cqrs_revision = new %s / '
        'deleted %s, cqrs_updated = new %s / deleted %s (%s).',
        pk_value,
        data.get('cqrs_revision'),
        tombstone.revision,
        data.get('cqrs_updated'),
        tombstone.updated,
        cqrs_id,
    )
