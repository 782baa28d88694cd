"""Django admin support for master models."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest


class CQRSAdminMasterSyncMixin:
    """Adds the "Synchronize selected … via CQRS" action to a master model's admin."""

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        if 'sync_items' not in actions:
            action = self.get_action('sync_items')
            if action is not None:
                actions['sync_items'] = action
        return actions

    @admin.action(description='Synchronize selected %(verbose_name_plural)s via CQRS')
    def sync_items(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Publish a SYNC for every selected row and report the result."""
        synced, failed = 0, []
        for item in self._cqrs_sync_queryset(queryset):
            if item.cqrs_sync():
                synced += 1
            else:
                failed.append(item)
        opts = queryset.model._meta
        self.message_user(request, f'Successfully synced {synced} {opts.verbose_name_plural}.')
        if failed:
            names = ', '.join(f'{item} (pk {item.pk})' for item in failed)
            self.message_user(
                request,
                f'Failed to sync {len(failed)} {opts.verbose_name_plural}: {names}.',
                level=messages.ERROR,
            )

    def _cqrs_sync_queryset(self, queryset: QuerySet) -> Any:
        """Hook to adjust the selected rows before syncing (e.g. ``select_related``)."""
        return queryset
