"""What one master instance did in the current transaction: its saves and its one publish hook.

Inside ``atomic()`` the first save of an instance registers one ``transaction.on_commit`` hook
for it. Later saves of the same instance in that transaction find the hook still waiting in
``connection.run_on_commit`` (Django keeps ``(savepoint ids, callable, robust)`` entries there
and drops them on rollback), so they count as further saves: the revision is not bumped again
and no second message is queued. After a commit the hook clears the record; after a rollback
the hook is gone, the record no longer matches and the next save starts afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction

_ATTR = '_cqrs_transaction'


class InstanceTransaction:
    """The record of one instance in one transaction."""

    __slots__ = ('alias', 'index', 'hook', 'saves', 'revised', 'callback')

    def __init__(self, alias: str, index: int) -> None:
        self.alias = alias
        self.index = index
        self.hook: Callable[[], None] | None = None
        self.saves = 0
        """Calls of ``save()`` in this transaction."""
        self.revised = False
        """Whether a save already set the revision this transaction publishes."""
        self.callback: Callable[[], Any] | None = None
        """The publishing to run at commit, once one is queued."""


def _find(instance: Any, connection: Any) -> InstanceTransaction | None:
    record = instance.__dict__.get(_ATTR)
    if record is None or record.alias != connection.alias or not connection.in_atomic_block:
        return None
    hooks = connection.run_on_commit
    index = record.index
    if index < len(hooks) and hooks[index][1] is record.hook:
        return record
    for index, entry in enumerate(hooks):
        if entry[1] is record.hook:
            record.index = index
            return record
    return None


def enter(instance: Any, using: str) -> InstanceTransaction | None:
    """The instance's record for the current transaction of ``using`` (created on first use).

    None outside a transaction.
    """
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        instance.__dict__.pop(_ATTR, None)
        return None
    record = _find(instance, connection)
    if record is not None:
        return record
    record = InstanceTransaction(connection.alias, len(connection.run_on_commit))

    def hook() -> None:
        if instance.__dict__.get(_ATTR) is record:
            del instance.__dict__[_ATTR]
        callback = record.callback
        if callback is not None:
            callback()

    record.hook = hook
    instance.__dict__[_ATTR] = record
    transaction.on_commit(hook, using=using)
    return record


def saves_count(instance: Any) -> int:
    """How many times the instance was saved in the still open transaction (0 outside one)."""
    record = instance.__dict__.get(_ATTR)
    if record is None:
        return 0
    if _find(instance, transaction.get_connection(record.alias)) is not record:
        return 0
    return record.saves


def forget(instance: Any) -> None:
    """Start a new record at the next save (a queued publishing still runs at commit)."""
    instance.__dict__.pop(_ATTR, None)
