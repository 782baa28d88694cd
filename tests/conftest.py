"""Shared fixtures of the core test suite."""

import logging

import pytest

from dj_cqrs.transport.loopback import LoopbackTransport
from tests.dj_master.models import SimplestModel
from tests.dj_replica import models as replica_models
from tests.harness import logged


def pytest_collection_modifyitems(config, items):
    """Tests marked for one database vendor run only on that vendor's settings."""
    from django.db import connection

    for item in items:
        for vendor in ('sqlite', 'postgresql'):
            if item.get_closest_marker(f'{vendor}_only') and connection.vendor != vendor:
                item.add_marker(pytest.mark.skip(reason=f'{vendor} behaviour'))


@pytest.fixture(autouse=True)
def _clean_records():
    replica_models.RECORDED.clear()
    replica_models.RawReplica.STORE.clear()
    yield
    replica_models.RECORDED.clear()
    replica_models.RawReplica.STORE.clear()


@pytest.fixture
def recorded():
    """Calls of the recording replica hooks, in order."""
    return replica_models.RECORDED


@pytest.fixture
def simplest_rows():
    """Master ``SimplestModel`` rows 1, 2 and 3, named ``row 1`` ... ``row 3``."""
    return [SimplestModel.objects.create(id=pk, name=f'row {pk}') for pk in (1, 2, 3)]


@pytest.fixture
def cqrs_logs(caplog):
    """Records of the ``django-cqrs`` logger (level DEBUG and up)."""
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    return caplog


@pytest.fixture
def produced(monkeypatch):
    """Payloads handed to the transport, in order (they are still applied on the replica)."""
    payloads = []
    original = LoopbackTransport.produce

    def produce(payload):
        payloads.append(payload)
        return original(payload)

    monkeypatch.setattr(LoopbackTransport, 'produce', staticmethod(produce))
    return payloads


@pytest.fixture
def cqrs_warnings(caplog):
    """A function returning the WARNING messages of the ``django-cqrs`` logger so far."""
    caplog.set_level(logging.DEBUG, logger='django-cqrs')

    return lambda: logged(caplog, 'WARNING')
