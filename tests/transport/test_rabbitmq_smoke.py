import pytest

from tests.dj_master.models import SimplestModel
from tests.harness import wait_for


@pytest.mark.django_db(transaction=True)
def test_master_save_reaches_replica_through_cqrs_consume(master, replica_service):
    replica = replica_service().start('-w', '1')
    replica.wait_ready()
    master()
    SimplestModel.objects.create(id=1, name='first')
    wait_for(lambda: replica.count() == 1, message='replica row')
    assert replica.query('SELECT id, name, cqrs_revision FROM dj_replica_simplestreplica') == [
        (1, 'first', 0)
    ]
