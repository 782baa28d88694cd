"""Django admin support for master models."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IS_POPUP_VAR
from django.http import HttpRequest
from django.utils.translation import gettext_lazy


class CQRSAdminMasterSyncMixin:
    """Adds the "Synchronize selected … via CQRS" action to a master model's admin.

    The action is added to the admin's own actions; ``actions = None`` turns all actions off,
    this one included. It needs the model's change permission: a user who may only view the
    rows neither sees it nor can post it.
    """

    def get_actions(self, request: HttpRequest) -> dict:
        """The admin's actions plus ``sync_items``, unless ``actions = None``."""
        actions = super().get_actions(request)
        if self.actions is None or IS_POPUP_VAR in request.GET or 'sync_items' in actions:
            return actions
        action = self.get_action('sync_items')
        if action is not None and self._filter_actions_by_permissions(request, [action]):
            actions['sync_items'] = action
        return actions

    @admin.action(
        description=gettext_lazy('Synchronize selected %(verbose_name_plural)s via CQRS'),
        permissions=['change'],
    )
    def sync_items(self, request: HttpRequest, queryset: Iterable) -> None:
        """Publish a SYNC for every selected instance and report the result in one message.

        ``queryset`` may be any iterable of master instances. The message is
        ``"<n> successfully synced. <m> failed: [<instance>, ...]"`` (the failed instances'
        reprs), at the INFO level.
        """
        synced, failed = 0, []
        for item in self._cqrs_sync_queryset(queryset):
            if item.cqrs_sync():
                synced += 1
            else:
                failed.append(item)
        self.message_user(request, f'{synced} successfully synced. {len(failed)} failed: {failed}')

    def _cqrs_sync_queryset(self, queryset: Any) -> Any:
        """Hook to adjust the selected rows before syncing (e.g. ``select_related``)."""
        return queryset
