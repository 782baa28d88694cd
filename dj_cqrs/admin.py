"""Admin integration; ``CQRSAdminMasterSyncMixin`` is also importable from here."""

from dj_cqrs.admin_mixins import CQRSAdminMasterSyncMixin

__all__ = ['CQRSAdminMasterSyncMixin']
