"""Issue 9, item 18: the ``sync_items`` admin action behaves as django-cqrs's."""

import pytest
from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.auth import get_user_model
from django.contrib.messages.storage.fallback import FallbackStorage
from django.test import RequestFactory
from django.utils.functional import Promise

from dj_cqrs.admin import CQRSAdminMasterSyncMixin
from dj_cqrs.constants import SignalType
from tests.dj_master.models import SimplestModel

pytestmark = pytest.mark.django_db(transaction=True)


class NoActionsAdmin(CQRSAdminMasterSyncMixin, admin.ModelAdmin):
    actions = None


class ListedAdmin(CQRSAdminMasterSyncMixin, admin.ModelAdmin):
    actions = ['sync_items']


def _request(**get):
    request = RequestFactory().get('/admin/dj_master/simplestmodel/', get)
    request.user = get_user_model()(is_superuser=True, is_staff=True, is_active=True)
    request.session = {}
    request._messages = FallbackStorage(request)
    return request


def request_messages(request):
    """``(level, text)`` of the messages stored on a ``RequestFactory`` request."""
    return [(m.level, m.message) for m in messages.get_messages(request)]


@pytest.fixture
def model_admin():
    return admin.site._registry[SimplestModel]


@pytest.fixture
def fail_pk_2(monkeypatch):
    original = SimplestModel.cqrs_sync

    def cqrs_sync(self, using=None, queue=None):
        return False if self.pk == 2 else original(self, using=using, queue=queue)

    monkeypatch.setattr(SimplestModel, 'cqrs_sync', cqrs_sync)


def test_item_18_message_is_the_originals_single_info_line(model_admin, simplest_rows, fail_pk_2):
    request = _request()
    model_admin.sync_items(request, SimplestModel.objects.order_by('pk'))
    assert request_messages(request) == [
        (
            messages.INFO,
            '2 successfully synced. 1 failed: [<SimplestModel: SimplestModel object (2)>]',
        )
    ]


def test_item_18_message_when_all_synced(model_admin, simplest_rows, produced):
    produced.clear()
    request = _request()
    model_admin.sync_items(request, SimplestModel.objects.all())
    assert request_messages(request) == [(messages.INFO, '3 successfully synced. 0 failed: []')]
    assert sorted(p.pk for p in produced if p.signal_type == SignalType.SYNC) == [1, 2, 3]


def test_item_18_message_for_an_empty_selection(model_admin):
    request = _request()
    model_admin.sync_items(request, SimplestModel.objects.none())
    assert request_messages(request) == [(messages.INFO, '0 successfully synced. 0 failed: []')]


@pytest.mark.parametrize('kind', [list, tuple, iter, 'generator'])
def test_item_18_accepts_any_iterable_of_instances(model_admin, simplest_rows, produced, kind):
    items = list(SimplestModel.objects.filter(pk__in=[1, 3]).order_by('pk'))
    selection = (item for item in items) if kind == 'generator' else kind(items)
    produced.clear()
    request = _request()
    model_admin.sync_items(request, selection)
    assert [p.pk for p in produced] == [1, 3]
    assert request_messages(request) == [(messages.INFO, '2 successfully synced. 0 failed: []')]


def test_item_18_counts_what_the_hook_returned(model_admin, simplest_rows, produced, monkeypatch):
    """Deliberately different: the original counts the selection, not the synced rows."""
    monkeypatch.setattr(model_admin, '_cqrs_sync_queryset', lambda queryset: queryset[:1])
    produced.clear()
    request = _request()
    model_admin.sync_items(request, SimplestModel.objects.order_by('pk'))
    assert [p.pk for p in produced] == [1]
    assert request_messages(request) == [(messages.INFO, '1 successfully synced. 0 failed: []')]


def test_item_18_action_is_added_after_the_site_actions(model_admin):
    assert list(model_admin.get_actions(_request())) == ['delete_selected', 'sync_items']


def test_item_18_actions_none_removes_the_action():
    model_admin = NoActionsAdmin(SimplestModel, admin.site)
    assert model_admin.get_actions(_request()) == {}


def test_item_18_no_actions_in_a_popup(model_admin):
    assert model_admin.get_actions(_request(**{IS_POPUP_VAR: '1'})) == {}


def test_item_18_listed_action_appears_once():
    model_admin = ListedAdmin(SimplestModel, admin.site)
    assert list(model_admin.get_actions(_request())) == ['delete_selected', 'sync_items']


def test_item_18_action_description_is_the_originals_translatable_string(model_admin):
    _, name, description = model_admin.get_actions(_request())['sync_items']
    assert name == 'sync_items'
    assert isinstance(description, Promise)
    assert str(description) == 'Synchronize selected %(verbose_name_plural)s via CQRS'
    assert CQRSAdminMasterSyncMixin.sync_items.short_description is description
