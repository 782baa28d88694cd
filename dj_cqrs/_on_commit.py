"""One publish hook per instance and transaction, run when the transaction commits.

Django's ``transaction.on_commit`` keeps its hooks in ``connection.run_on_commit`` as
``(savepoint ids, callable, robust)`` entries and drops them on rollback. An instance remembers
where its own hook went, so a second save inside the same transaction finds the hook still
waiting and neither bumps the revision again nor queues a second message; after a commit or a
rollback the hook is gone and the next save starts afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction

_HOOK_ATTR = '_cqrs_commit_hook'


def _hooks(connection: Any) -> list:
    return connection.run_on_commit


def is_pending(instance: Any, using: str) -> bool:
    """True if ``instance`` has a publish hook waiting for the current transaction to commit."""
    hook = instance.__dict__.get(_HOOK_ATTR)
    if hook is None:
        return False
    alias, index, func = hook
    connection = transaction.get_connection(using)
    if alias != connection.alias or not connection.in_atomic_block:
        return False
    hooks = _hooks(connection)
    if index < len(hooks) and hooks[index][1] is func:
        return True
    return any(entry[1] is func for entry in hooks)


def schedule(instance: Any, using: str, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the current transaction of ``using`` commits (now, outside one)."""
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        callback()
        return

    def hook() -> None:
        instance.__dict__.pop(_HOOK_ATTR, None)
        callback()

    instance.__dict__[_HOOK_ATTR] = (connection.alias, len(_hooks(connection)), hook)
    transaction.on_commit(hook, using=using)


def forget(instance: Any) -> None:
    """Drop the instance's marker (its hook, if any, still runs)."""
    instance.__dict__.pop(_HOOK_ATTR, None)
