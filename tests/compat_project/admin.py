from django.contrib import admin

from dj_cqrs.admin import CQRSAdminMasterSyncMixin
from tests.compat_project.models import Account


class AccountAdmin(CQRSAdminMasterSyncMixin, admin.ModelAdmin):
    list_display = ('id', 'name', 'status')


admin.site.register(Account, AccountAdmin)
