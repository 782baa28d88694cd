"""The models of ``dj_cqrs``: the transactional outbox (``settings.CQRS['master']['outbox'] =
True``) on masters; the tombstones of deleted rows (``dj_cqrs.tombstones``) and the progress of
the consumer (``dj_cqrs.replica_status``) on replicas. ``Status``, without a table, is the
admin's handle on the replication status page."""

from django.db import models

from dj_cqrs.replica_status import CQRSLagSample, CQRSReplicaStatus
from dj_cqrs.tombstones import CQRSTombstone

__all__ = ['CQRSLagSample', 'CQRSOutboxMessage', 'CQRSReplicaStatus', 'CQRSTombstone', 'Status']


class CQRSOutboxMessage(models.Model):
    """A change not yet confirmed by the broker, written in the transaction of the change.

    SAVE and SYNC rows name the instance: the relay publishes its state at relay time (with its
    current revision). DELETE rows keep the whole message, since the instance is gone.
    """

    id = models.BigAutoField(primary_key=True)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    """When the change was written (indexed)."""
    cqrs_id = models.CharField(max_length=255)
    """``CQRS_ID`` of the changed model."""
    instance_pk = models.CharField(max_length=255)
    """Primary key of the changed row, as a string."""
    signal_type = models.CharField(max_length=6)
    """``SAVE``, ``SYNC`` or ``DELETE``."""
    queue = models.CharField(max_length=255, null=True, blank=True)
    """Target queue of a direct SYNC, else NULL."""
    previous_data = models.JSONField(null=True, blank=True)
    """Previous values of the tracked fields (SAVE)."""
    payload = models.JSONField(null=True, blank=True)
    """The whole message (DELETE, since the row is gone)."""
    failed_at = models.DateTimeField(null=True, blank=True)
    """When a publish of the change failed: the relay takes the row at once, whatever its age."""

    class Meta:
        db_table = 'dj_cqrs_outbox'
        verbose_name = 'CQRS outbox message'
        ordering = ('id',)

    def __str__(self) -> str:
        return f'{self.signal_type} {self.cqrs_id} {self.instance_pk}'


class Status(models.Model):
    """No table: the replication status page of the admin (``dj_cqrs.admin``) hangs on it.

    Its only permission, ``dj_cqrs.view_status``, lets staff users who are not superusers see
    the page.
    """

    class Meta:
        managed = False
        default_permissions = ('view',)
        verbose_name = 'replication status'
        verbose_name_plural = 'replication status'
