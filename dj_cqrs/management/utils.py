"""Helpers of the management commands that project code can use too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import Model, QuerySet
from django.db.models.query import FlatValuesListIterable

_MISSING = object()


def batch_qs(qs: QuerySet, batch_size: int = 10000) -> Iterator[QuerySet]:
    """Yield ``qs`` as consecutive querysets of at most ``batch_size`` rows each.

    The number of batches is fixed by ``qs.count()`` at the start, so this is meant for rows
    that do not change meanwhile (migrations, one-off scripts). A queryset without an ordering,
    or ordered by its primary key only, is paged by primary key (``pk > last`` ... ``LIMIT``:
    each page is one index range, in pk order); any other ordering is paged with OFFSET
    slices in that order. Each yielded queryset is lazy, as any queryset.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, not {batch_size}.')
    total = qs.count()
    if not total:
        return
    batches = -(-total // batch_size)
    direction = _keyset_direction(qs)
    if direction is None:
        for start in range(0, total, batch_size):
            yield qs[start : min(start + batch_size, total)]
        return

    ordered = qs.order_by('pk' if direction == 'gt' else '-pk')
    last: Any = _MISSING
    for number in range(batches):
        page = ordered if last is _MISSING else ordered.filter(**{f'pk__{direction}': last})
        page = page[:batch_size]
        yield page
        if number == batches - 1:
            return
        last = _last_pk(page, ordered, last, direction, batch_size)
        if last is _MISSING:
            return


def _keyset_direction(qs: QuerySet) -> str | None:
    """``'gt'`` / ``'lt'`` when ``qs`` can be paged by pk ascending / descending, else None."""
    query = qs.query
    if query.is_sliced or query.distinct or query.combinator or query.extra_order_by:
        return None
    if not qs.ordered:
        return 'gt'
    if not query.order_by or len(query.order_by) != 1 or not isinstance(query.order_by[0], str):
        return None
    pk = qs.model._meta.pk
    field = query.order_by[0]
    name = field.lstrip('-')
    if name not in ('pk', pk.name, pk.attname):
        return None
    return 'lt' if field.startswith('-') else 'gt'


def _last_pk(page: QuerySet, ordered: QuerySet, last: Any, direction: str, size: int) -> Any:
    """The pk of the last row of ``page``, from its rows when they were read (no query)."""
    rows = page._result_cache
    if rows is not None:
        if len(rows) < size:
            return _MISSING
        value = _pk_of_row(page, rows[-1])
        if value is not _MISSING:
            return value
    pks = ordered.values_list('pk', flat=True)
    if last is not _MISSING:
        pks = pks.filter(**{f'pk__{direction}': last})
    found = list(pks[size - 1 : size])
    return found[0] if found else _MISSING


def _pk_of_row(page: QuerySet, row: Any) -> Any:
    if isinstance(row, Model):
        return row.pk
    meta = page.model._meta
    names = ('pk', meta.pk.name, meta.pk.attname)
    if isinstance(row, dict):
        return next((row[name] for name in names if name in row), _MISSING)
    for index, name in enumerate(page._fields or ()):
        if name in names:
            return row if page._iterable_class is FlatValuesListIterable else row[index]
    return _MISSING
