"""The ``sync_items`` admin action, through the real Django admin (SPEC §8)."""

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

import dj_cqrs.admin
import dj_cqrs.admin_mixins
from dj_cqrs.constants import SignalType
from tests.dj_master.models import Author, Publisher, SimplestModel
from tests.dj_replica.models import AuthorReplica, SimplestReplica

CHANGELIST = '/admin/dj_master/simplestmodel/'

# The action's messages are sent while the request runs; the publishing of a SYNC happens
# on commit, so the test database must really commit.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client_logged_in(client):
    user = get_user_model().objects.create_superuser('root', 'root@example.com', 'pw')
    client.force_login(user)
    return client


def _sync(client, pks, url=CHANGELIST):
    return client.post(
        url,
        {'action': 'sync_items', '_selected_action': [str(pk) for pk in pks], 'index': 0},
        follow=True,
    )


def response_messages(response):
    """The texts of the messages shown on a test-client response's page."""
    return [str(m) for m in response.context['messages']]


def test_action_is_listed_on_changelist(admin_client_logged_in, simplest_rows):
    response = admin_client_logged_in.get(CHANGELIST)
    assert response.status_code == 200
    content = response.content.decode()
    assert 'value="sync_items"' in content
    assert 'Synchronize selected simplest models via CQRS' in content


def test_action_registered_on_model_admin():
    model_admin = admin.site._registry[SimplestModel]
    assert isinstance(model_admin, dj_cqrs.admin_mixins.CQRSAdminMasterSyncMixin)
    func, name, description = model_admin.get_action('sync_items')
    assert name == 'sync_items'
    assert description % {'verbose_name_plural': 'things'} == (
        'Synchronize selected things via CQRS'
    )


def test_sync_selected_rows(admin_client_logged_in, simplest_rows, produced):
    produced.clear()
    response = _sync(admin_client_logged_in, [1, 3])

    assert response.status_code == 200
    syncs = [p for p in produced if p.signal_type == SignalType.SYNC]
    assert len(produced) == 2
    assert sorted(p.pk for p in syncs) == [1, 3]
    assert {p.cqrs_id for p in syncs} == {'simplest'}
    assert all(p.queue is None for p in syncs)
    assert response_messages(response) == ['2 successfully synced. 0 failed: []']
    assert '2 successfully synced. 0 failed: []' in response.content.decode()


def test_sync_repairs_the_replica(admin_client_logged_in, simplest_rows, produced):
    SimplestReplica.objects.filter(pk=2).delete()
    produced.clear()

    _sync(admin_client_logged_in, [2])

    assert len(produced) == 1
    replica = SimplestReplica.objects.get(pk=2)
    assert replica.name == 'row 2'


def test_sync_failure_is_reported(admin_client_logged_in, simplest_rows, produced, monkeypatch):
    original = SimplestModel.cqrs_sync

    def cqrs_sync(self, using=None, queue=None):
        if self.pk == 2:
            return False
        return original(self, using=using, queue=queue)

    monkeypatch.setattr(SimplestModel, 'cqrs_sync', cqrs_sync)
    produced.clear()

    response = _sync(admin_client_logged_in, [1, 2, 3])

    assert sorted(p.pk for p in produced) == [1, 3]
    expected = '2 successfully synced. 1 failed: [<SimplestModel: SimplestModel object (2)>]'
    assert response_messages(response) == [expected]
    assert 'failed: [&lt;SimplestModel: SimplestModel object (2)&gt;]' in (
        response.content.decode()
    )


def test_sync_of_a_row_deleted_behind_the_admins_back(
    admin_client_logged_in, simplest_rows, produced, monkeypatch
):
    """The row vanishes between the changelist query and the sync: reported as failed."""
    model_admin = admin.site._registry[SimplestModel]
    original_hook = model_admin._cqrs_sync_queryset

    def hook(queryset):
        items = list(original_hook(queryset))
        SimplestModel.objects.filter(pk=3).delete()
        return items

    monkeypatch.setattr(model_admin, '_cqrs_sync_queryset', hook)
    produced.clear()

    response = _sync(admin_client_logged_in, [1, 3])

    assert [p.signal_type for p in produced] == [SignalType.DELETE, SignalType.SYNC]
    assert [p.pk for p in produced if p.signal_type == SignalType.SYNC] == [1]
    assert response_messages(response) == [
        '1 successfully synced. 1 failed: [<SimplestModel: SimplestModel object (3)>]'
    ]


def test_cqrs_sync_queryset_hook_is_used(
    admin_client_logged_in, simplest_rows, produced, monkeypatch
):
    model_admin = admin.site._registry[SimplestModel]
    calls = []

    def hook(queryset):
        calls.append(sorted(queryset.values_list('pk', flat=True)))
        return queryset.filter(pk=1)

    monkeypatch.setattr(model_admin, '_cqrs_sync_queryset', hook)
    produced.clear()

    response = _sync(admin_client_logged_in, [1, 2])

    assert calls == [[1, 2]]
    assert [p.pk for p in produced] == [1]
    assert response_messages(response) == ['1 successfully synced. 0 failed: []']


def test_default_hook_returns_the_queryset():
    model_admin = admin.site._registry[SimplestModel]
    queryset = SimplestModel.objects.all()
    assert model_admin._cqrs_sync_queryset(queryset) is queryset


def test_sync_of_serializer_model(admin_client_logged_in, produced):
    publisher = Publisher.objects.create(name='pub')
    author = Author.objects.create(id=5, name='writer', publisher=publisher)
    produced.clear()

    response = _sync(admin_client_logged_in, [author.pk], url='/admin/dj_master/author/')

    assert len(produced) == 1
    assert produced[0].signal_type == SignalType.SYNC
    assert produced[0].instance_data['publisher'] == {'id': publisher.pk, 'name': 'pub'}
    assert AuthorReplica.objects.get(pk=5).publisher_id == publisher.pk
    assert response_messages(response) == ['1 successfully synced. 0 failed: []']


def test_both_import_paths_are_the_same_class():
    assert dj_cqrs.admin.CQRSAdminMasterSyncMixin is dj_cqrs.admin_mixins.CQRSAdminMasterSyncMixin


# --- issue 12, item 6: who may sync ------------------------------------------------------------


def _staff(username, *codenames):
    user = get_user_model().objects.create_user(username, password='pw', is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def view_only_client(client):
    client.force_login(_staff('viewer', 'view_simplestmodel'))
    return client


@pytest.fixture
def editor_client(client):
    client.force_login(_staff('editor', 'view_simplestmodel', 'change_simplestmodel'))
    return client


def test_item_06_view_only_staff_does_not_see_the_action(view_only_client, simplest_rows):
    response = view_only_client.get(CHANGELIST)
    assert response.status_code == 200
    content = response.content.decode()
    assert 'row 1' in content  # the changelist itself is shown
    assert 'value="sync_items"' not in content
    assert 'via CQRS' not in content


def test_item_06_staff_with_change_permission_sees_the_action(editor_client, simplest_rows):
    response = editor_client.get(CHANGELIST)
    assert response.status_code == 200
    assert 'value="sync_items"' in response.content.decode()
    assert 'Synchronize selected simplest models via CQRS' in response.content.decode()


def test_item_06_view_only_staff_cannot_post_the_action(view_only_client, simplest_rows, produced):
    produced.clear()
    response = _sync(view_only_client, [1, 2])

    assert response.status_code == 200
    assert produced == []
    assert response_messages(response) == []


def test_item_06_staff_with_change_permission_can_post_the_action(
    editor_client, simplest_rows, produced
):
    produced.clear()
    response = _sync(editor_client, [1, 2])

    assert sorted(p.pk for p in produced if p.signal_type == SignalType.SYNC) == [1, 2]
    assert response_messages(response) == ['2 successfully synced. 0 failed: []']


def test_item_06_listed_action_also_needs_the_change_permission(
    view_only_client, simplest_rows, produced
):
    """``actions = ['sync_items']`` on the admin: Django's own filter applies the permission."""
    model_admin = admin.site._registry[SimplestModel]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_admin, 'actions', ['sync_items'])
        assert 'value="sync_items"' not in view_only_client.get(CHANGELIST).content.decode()
        produced.clear()
        _sync(view_only_client, [1])
    assert produced == []
