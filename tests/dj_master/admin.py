from django.contrib import admin

from dj_cqrs.admin import CQRSAdminMasterSyncMixin
from tests.dj_master.models import Author, SimplestModel


@admin.register(SimplestModel)
class SimplestModelAdmin(CQRSAdminMasterSyncMixin, admin.ModelAdmin):
    list_display = ('id', 'name', 'cqrs_revision')


@admin.register(Author)
class AuthorAdmin(CQRSAdminMasterSyncMixin, admin.ModelAdmin):
    list_display = ('id', 'name')
