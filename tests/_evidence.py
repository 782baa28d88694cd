"""What each passing test ran against: a real broker, a real PostgreSQL, a browser.

A pytest plugin (``-p tests._evidence``, loaded by ``scripts/run_tests.sh``) that writes one
JSON line per passed test to the file named by ``CQRS_TEST_EVIDENCE``: its node id and the
real servers it used. ``scripts/test_summary.py`` combines the files of all the runs into the
headline printed at the end of ``make test``: distinct tests, and how many of them ran against
each kind of server.

A test counts as using:

- a broker when it requests one of the broker fixtures (``BROKER_FIXTURES``);
- a browser when it requests ``open_browser``;
- PostgreSQL when the run's Django database is PostgreSQL and the test uses the database,
  when it is an integration test of a PostgreSQL run (``CQRS_TEST_DB_VENDOR=postgresql``), or
  when it calls ``touched('postgresql')`` (a PostgreSQL replica service started by the test).
"""

from __future__ import annotations

import json
import os

import pytest

BROKER_FIXTURES = frozenset({'amqp_url', 'redis_url', 'private_broker', 'tls_broker', 'broker'})
BROWSER_FIXTURES = frozenset({'open_browser'})
DATABASE_FIXTURES = frozenset({'db', 'transactional_db', 'django_db_setup'})

_current: set[str] | None = None
# Resolved when the plugin loads: some tests change the working directory.
_path = (
    os.path.abspath(os.environ['CQRS_TEST_EVIDENCE'])
    if os.environ.get('CQRS_TEST_EVIDENCE')
    else None
)


def touched(kind: str) -> None:
    """Record that the running test uses a real server of ``kind`` (no-op outside the plugin)."""
    if _current is not None:
        _current.add(kind)


def _django_uses_postgresql() -> bool:
    try:
        from django.conf import settings

        return 'postgresql' in settings.DATABASES['default']['ENGINE']
    except Exception:
        return False


def _static_kinds(item: pytest.Item) -> set[str]:
    names = set(getattr(item, 'fixturenames', ()))
    kinds = set()
    if names & BROKER_FIXTURES:
        kinds.add('broker')
    if names & BROWSER_FIXTURES:
        kinds.add('browser')
    uses_db = bool(names & DATABASE_FIXTURES) or item.get_closest_marker('django_db') is not None
    if uses_db and _django_uses_postgresql():
        kinds.add('postgresql')
    if 'db_server' in names and os.environ.get('CQRS_TEST_DB_VENDOR') == 'postgresql':
        kinds.add('postgresql')
    return kinds


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    global _current
    _current = _static_kinds(item)
    try:
        yield
    finally:
        _current = None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _path or report.when != 'call' or not report.passed or _current is None:
        return
    with open(_path, 'a', encoding='utf-8') as stream:
        stream.write(json.dumps({'test': report.nodeid, 'kinds': sorted(_current)}) + '\n')
