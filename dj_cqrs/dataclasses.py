"""The CQRS message object and its wire (JSON dict) form."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from dateutil.parser import parse as parse_datetime

from dj_cqrs.correlation import get_correlation_id
from dj_cqrs.utils import get_json_valid_value, get_message_expiration_dt


class TransportPayload:
    """One CQRS message: what the master publishes and the replica applies.

    ``to_dict()`` gives the body sent over the wire; ``from_message()`` reads it back. Without
    a ``correlation_id`` the configured ``correlation_function`` gives one.
    """

    def __init__(
        self,
        signal_type: str,
        cqrs_id: str,
        instance_data: dict | None,
        instance_pk: Any,
        queue: str | None = None,
        previous_data: dict | None = None,
        correlation_id: str | None = None,
        expires: datetime | None = None,
        retries: int = 0,
        meta: dict | None = None,
    ) -> None:
        self.__signal_type = signal_type
        self.__cqrs_id = cqrs_id
        self.__instance_data = instance_data
        self.__instance_pk = instance_pk
        self.__queue = queue
        self.__previous_data = previous_data
        if not correlation_id:
            correlation_id = get_correlation_id(signal_type, cqrs_id, instance_pk, queue)
        self.__correlation_id = correlation_id
        self.__expires = expires
        self.__retries = retries
        self.__meta = meta

    @classmethod
    def from_message(cls, dct: dict) -> TransportPayload:
        """Build a payload from a decoded message body.

        A body without ``expires`` gets the default TTL from now; without ``retries``, 0.
        """
        if 'expires' in dct:
            expires = dct['expires']
            if expires is not None and not isinstance(expires, datetime):
                expires = _parse_expires(expires)
        else:
            expires = get_message_expiration_dt()
        return cls(
            dct['signal_type'],
            dct['cqrs_id'],
            dct['instance_data'],
            dct.get('instance_pk'),
            queue=dct.get('queue'),
            previous_data=dct.get('previous_data'),
            correlation_id=dct.get('correlation_id'),
            expires=expires,
            retries=dct.get('retries') or 0,
            meta=dct.get('meta'),
        )

    @property
    def signal_type(self) -> str:
        """``SAVE``, ``DELETE`` or ``SYNC``."""
        return self.__signal_type

    @property
    def cqrs_id(self) -> str:
        """The ``CQRS_ID`` of the model."""
        return self.__cqrs_id

    @property
    def instance_data(self) -> dict | None:
        """The serialized row (SAVE, SYNC) or its key fields (DELETE)."""
        return self.__instance_data

    @property
    def pk(self) -> Any:
        """The ``instance_pk``."""
        return self.__instance_pk

    @property
    def queue(self) -> str | None:
        """Target queue of a direct SYNC (set on the replica from the routing key), else None."""
        return self.__queue

    @queue.setter
    def queue(self, value: str | None) -> None:
        self.__queue = value

    @property
    def previous_data(self) -> dict | None:
        """Previous values of the tracked fields, or None."""
        return self.__previous_data

    @property
    def correlation_id(self) -> str | None:
        """The correlation id, or None."""
        return self.__correlation_id

    @property
    def expires(self) -> datetime | None:
        """When the message expires, or None for never."""
        return self.__expires

    @expires.setter
    def expires(self, value: datetime | None) -> None:
        self.__expires = value

    @property
    def retries(self) -> int:
        """Failed attempts so far; a negative value is refused."""
        return self.__retries

    @retries.setter
    def retries(self, value: int) -> None:
        if value < 0:
            raise AssertionError('Payload retries field should be 0 or positive integer.')
        self.__retries = value

    @property
    def meta(self) -> dict | None:
        """The ``meta`` dict of the message, or None."""
        return self.__meta

    def to_dict(self) -> dict:
        """Return the message body as a JSON-ready dict (SPEC §6)."""
        expires = self.__expires
        if expires is not None:
            expires = expires.replace(microsecond=0).isoformat()
        return {
            'signal_type': self.__signal_type,
            'cqrs_id': self.__cqrs_id,
            'instance_data': self.__instance_data,
            'previous_data': self.__previous_data,
            'instance_pk': get_json_valid_value(self.__instance_pk),
            'correlation_id': get_json_valid_value(self.__correlation_id),
            'retries': self.__retries,
            'expires': expires,
            'meta': self.__meta,
        }

    def is_expired(self) -> bool:
        """True when the message has an expiry date that is already past."""
        expires = self.__expires
        if expires is None:
            return False
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=timezone.utc)
        return expires <= datetime.now(tz=timezone.utc)

    def __repr__(self) -> str:
        return (
            f'<TransportPayload {self.__signal_type} {self.__cqrs_id} pk={self.__instance_pk!r} '
            f'retries={self.__retries}>'
        )


def _parse_expires(value: str) -> datetime:
    """The ``expires`` of a message body: ISO 8601 as every sender writes it, read fast, with
    dateutil for anything else a hand-written message may hold."""
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return parse_datetime(value)
