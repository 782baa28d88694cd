"""Admin of the master models, with the "Synchronize selected … via CQRS" action."""

from django.contrib import admin

from catalog.models import Author, Book, Publisher
from dj_cqrs.admin_mixins import CQRSAdminMasterSyncMixin


class MasterAdmin(CQRSAdminMasterSyncMixin, admin.ModelAdmin):
    # The revision is the library's business: show it, never edit it.
    readonly_fields = ['cqrs_revision', 'cqrs_updated']


@admin.register(Publisher)
class PublisherAdmin(MasterAdmin):
    list_display = ['id', 'name', 'country', 'cqrs_revision', 'cqrs_updated']
    search_fields = ['name']


@admin.register(Author)
class AuthorAdmin(MasterAdmin):
    list_display = ['id', 'name', 'publisher', 'cqrs_revision', 'cqrs_updated']
    list_select_related = ['publisher']
    search_fields = ['name']

    def _cqrs_sync_queryset(self, queryset):
        return queryset.select_related('publisher')


@admin.register(Book)
class BookAdmin(MasterAdmin):
    list_display = ['id', 'title', 'author', 'price', 'cqrs_revision', 'cqrs_updated']
    list_select_related = ['author']
    list_filter = ['author__publisher']
    search_fields = ['title']
