"""Constants shared by the master and the replica sides and the wire format."""


class SignalType:
    """Kinds of CQRS messages."""

    SAVE = 'SAVE'
    """A row was created or changed."""
    DELETE = 'DELETE'
    """A row was deleted."""
    SYNC = 'SYNC'
    """A row re-sent on request (``cqrs_sync``, the admin action, the diff pipeline)."""

    ALL = (SAVE, DELETE, SYNC)
    """The three types."""


ALL_BASIC_FIELDS = '__all__'
"""``CQRS_FIELDS`` / ``CQRS_TRACKED_FIELDS`` value meaning every concrete field."""

NO_QUEUE = 'None'
"""Queue written by ``cqrs_diff_replica`` for a service without one; read as a broadcast."""

FIELDS_TRACKER_FIELD_NAME = 'cqrs_field_tracker'
TRACKED_FIELDS_ATTR_NAME = '_cqrs_tracked_fields_data'
DELETED_ATTR = '_cqrs_deleted'

DEFAULT_EXCHANGE = 'cqrs'
DEFAULT_CONSUMER_PREFETCH_COUNT = 10

DEFAULT_MASTER_AUTO_UPDATE_FIELDS = False
DEFAULT_MASTER_MESSAGE_TTL = 86400

DEFAULT_REPLICA_MAX_RETRIES = 30
DEFAULT_REPLICA_RETRY_DELAY = 2
DEFAULT_REPLICA_DELAY_QUEUE_MAX_SIZE = 1000
DEFAULT_DEAD_MESSAGE_TTL = 864000
DEFAULT_REPLICA_TOMBSTONE_TTL = 86400

DB_VENDOR_PG = 'postgresql'
DB_VENDOR_MYSQL = 'mysql'
SUPPORTED_TIMEOUT_DB_VENDORS = {DB_VENDOR_MYSQL, DB_VENDOR_PG}
"""Database vendors ``CQRS_QUERY_TIMEOUT`` applies to."""

PG_TIMEOUT_FLAG = 'statement timeout'
"""How a PostgreSQL statement timeout error is recognised in its message."""
PG_QUERY_CANCELED = '57014'
MYSQL_TIMEOUT_ERROR_CODE = 3024
"""MySQL error code of a query stopped by its time limit."""
