"""Master and replica models of one project, written as the django-cqrs README shows them.

Master and replica live in one database here; in production they are two services.
"""

from django.db import models

from dj_cqrs.mixins import MasterMixin, ReplicaMixin

# Master side


class Account(MasterMixin, models.Model):
    CQRS_ID = 'compat_account'
    CQRS_PRODUCE = True
    CQRS_TRACKED_FIELDS = ('name', 'status')

    name = models.CharField(max_length=100)
    status = models.CharField(max_length=20, default='active')
    balance = models.DecimalField(max_digits=10, decimal_places=2, default=0)

    def is_sync_instance(self):
        return self.status != 'hidden'


class Author(MasterMixin, models.Model):
    CQRS_ID = 'compat_author'
    CQRS_SERIALIZER = 'tests.compat_project.serializers.AuthorSerializer'
    CQRS_TRACKED_FIELDS = '__all__'

    name = models.CharField(max_length=100)
    account = models.ForeignKey(Account, null=True, on_delete=models.SET_NULL)

    @classmethod
    def relate_cqrs_serialization(cls, queryset):
        return queryset.select_related('account')


class Ticket(MasterMixin, models.Model):
    CQRS_ID = 'compat_ticket'

    title = models.CharField(max_length=100)


# Replica side


class AccountRef(ReplicaMixin, models.Model):
    """Replica with renamed fields; keeps a history of the tracked changes it receives."""

    CQRS_ID = 'compat_account'
    CQRS_MAPPING = {
        'id': 'id',
        'name': 'title',
        'status': 'status',
        'balance': 'balance',
    }

    id = models.IntegerField(primary_key=True)
    title = models.CharField(max_length=100)
    status = models.CharField(max_length=20)
    balance = models.DecimalField(max_digits=10, decimal_places=2)

    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        for field, old in sorted((previous_data or {}).items()):
            AccountHistory.objects.create(
                account_id=self.pk,
                field=field,
                old=old,
                new=mapped_data.get(field),
                sync=sync,
            )
        return super().cqrs_update(sync, mapped_data, previous_data=previous_data, meta=meta)


class AccountHistory(models.Model):
    """Not replicated: written by ``AccountRef.cqrs_update``."""

    account_id = models.IntegerField()
    field = models.CharField(max_length=50)
    old = models.CharField(max_length=100, null=True)
    new = models.CharField(max_length=100, null=True)
    sync = models.BooleanField()


class AuthorRef(ReplicaMixin, models.Model):
    """Replica of a master with a custom serializer: the hooks unpack the nested account."""

    CQRS_ID = 'compat_author'
    CQRS_CUSTOM_SERIALIZATION = True

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=100)
    account_name = models.CharField(max_length=100, null=True)
    last_previous_data = models.JSONField(null=True)

    @staticmethod
    def _values(mapped_data, previous_data):
        account = mapped_data.get('account') or {}
        return {
            'name': mapped_data['name'],
            'account_name': account.get('name'),
            'last_previous_data': previous_data,
            'cqrs_revision': mapped_data['cqrs_revision'],
            'cqrs_updated': mapped_data['cqrs_updated'],
        }

    @classmethod
    def cqrs_create(cls, sync, mapped_data, previous_data=None, meta=None):
        return cls._default_manager.create(
            id=mapped_data['id'], **cls._values(mapped_data, previous_data)
        )

    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        for field, value in self._values(mapped_data, previous_data).items():
            setattr(self, field, value)
        self.save()
        return self


class TicketEvents(ReplicaMixin):
    """A table-less handler: it keeps what it receives in memory instead of a table."""

    CQRS_ID = 'compat_ticket'
    CQRS_NO_DB_OPERATIONS = True

    received = []

    class Meta:
        abstract = True

    @classmethod
    def cqrs_save(cls, master_data, previous_data=None, sync=False):
        cls.received.append(('sync' if sync else 'save', master_data['id'], master_data['title']))
        return True

    @classmethod
    def cqrs_delete(cls, master_data):
        cls.received.append(('delete', master_data['id'], None))
        return True
