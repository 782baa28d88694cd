"""``TransportPayload`` and the JSON wire format of SPEC §6."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from dateutil.parser import isoparse
from django.test import override_settings

from dj_cqrs.constants import SignalType
from dj_cqrs.dataclasses import TransportPayload
from tests.dj_master.models import SimplestModel
from tests.dj_replica.models import SimplestReplica
from tests.harness import WIRE_KEYS

EXPIRES = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


def _full_payload(**kwargs):
    values = {
        'signal_type': SignalType.SAVE,
        'cqrs_id': 'simplest',
        'instance_data': {'id': 7, 'name': 'seven', 'cqrs_revision': 3},
        'instance_pk': 7,
        'queue': 'replica',
        'previous_data': {'name': 'six'},
        'correlation_id': 'corr-7',
        'expires': EXPIRES,
        'retries': 2,
        'meta': {'user': 'admin'},
    }
    values.update(kwargs)
    return TransportPayload(**values)


def _wire(payload):
    """Encode like a transport would and decode like a consumer would."""
    return json.loads(json.dumps(payload.to_dict()))


def _body(**kwargs):
    body = {
        'signal_type': 'SAVE',
        'cqrs_id': 'simplest',
        'instance_data': {'id': 1, 'cqrs_revision': 0},
        'instance_pk': 1,
    }
    body.update(kwargs)
    return body


# --- properties ----------------------------------------------------------------------------


def test_properties():
    payload = _full_payload()
    assert payload.signal_type == 'SAVE'
    assert payload.cqrs_id == 'simplest'
    assert payload.instance_data == {'id': 7, 'name': 'seven', 'cqrs_revision': 3}
    assert payload.pk == 7
    assert payload.queue == 'replica'
    assert payload.previous_data == {'name': 'six'}
    assert payload.correlation_id == 'corr-7'
    assert payload.expires == EXPIRES
    assert payload.retries == 2
    assert payload.meta == {'user': 'admin'}


def test_property_defaults():
    payload = TransportPayload(SignalType.DELETE, 'simplest', {'id': 1}, 1)
    assert payload.signal_type == 'DELETE'
    assert payload.queue is None
    assert payload.previous_data is None
    assert payload.correlation_id is None
    assert payload.expires is None
    assert payload.retries == 0
    assert payload.meta is None


def test_retries_setter():
    payload = _full_payload(retries=0)
    payload.retries = 5
    assert payload.retries == 5
    assert payload.to_dict()['retries'] == 5


def test_queue_setter():
    payload = _full_payload(queue=None)
    payload.queue = 'other'
    assert payload.queue == 'other'
    payload.queue = None
    assert payload.queue is None


def test_queue_is_not_part_of_the_body():
    assert 'queue' not in _full_payload(queue='replica').to_dict()


# --- to_dict() / wire format ---------------------------------------------------------------


def test_to_dict_has_exactly_the_wire_keys():
    assert set(_full_payload().to_dict()) == WIRE_KEYS


def test_to_dict_json_round_trip_key_for_key():
    decoded = _wire(_full_payload())
    expected = {
        'signal_type': 'SAVE',
        'cqrs_id': 'simplest',
        'instance_data': {'id': 7, 'name': 'seven', 'cqrs_revision': 3},
        'previous_data': {'name': 'six'},
        'instance_pk': 7,
        'correlation_id': 'corr-7',
        'retries': 2,
        'expires': '2026-01-02T03:04:05+00:00',
        'meta': {'user': 'admin'},
    }
    assert set(decoded) == set(expected)
    for key, value in expected.items():
        assert decoded[key] == value, key


def test_to_dict_nulls():
    decoded = _wire(
        TransportPayload(SignalType.SYNC, 'simplest', {'id': 1}, 1, expires=None, meta=None)
    )
    assert set(decoded) == WIRE_KEYS
    assert decoded['signal_type'] == 'SYNC'
    assert decoded['previous_data'] is None
    assert decoded['correlation_id'] is None
    assert decoded['expires'] is None
    assert decoded['meta'] is None
    assert decoded['retries'] == 0


def test_expires_iso_format_without_microseconds():
    expires = _full_payload().to_dict()['expires']
    assert expires == '2026-01-02T03:04:05+00:00'
    assert '.' not in expires


def test_expires_in_other_timezone_keeps_offset():
    tz = timezone(timedelta(hours=3))
    expires = datetime(2026, 1, 2, 6, 4, 5, 999, tzinfo=tz)
    assert _full_payload(expires=expires).to_dict()['expires'] == '2026-01-02T06:04:05+03:00'


def test_to_dict_does_not_change_the_payload():
    payload = _full_payload()
    payload.to_dict()
    assert payload.expires == EXPIRES


# --- from_message --------------------------------------------------------------------------


def test_from_message_round_trip():
    original = _full_payload()
    restored = TransportPayload.from_message(_wire(original))
    assert restored.signal_type == original.signal_type
    assert restored.cqrs_id == original.cqrs_id
    assert restored.instance_data == original.instance_data
    assert restored.pk == original.pk
    assert restored.previous_data == original.previous_data
    assert restored.correlation_id == original.correlation_id
    assert restored.retries == original.retries
    assert restored.meta == original.meta
    assert restored.expires == EXPIRES.replace(microsecond=0)
    assert restored.expires.tzinfo is not None
    assert restored.to_dict() == original.to_dict()


def test_from_message_without_expires_gets_default_ttl():
    with override_settings(
        CQRS={'transport': 'dj_cqrs.transport.mock.TransportMock', 'master': {}}
    ):
        before = datetime.now(tz=timezone.utc)
        payload = TransportPayload.from_message(_body())
        after = datetime.now(tz=timezone.utc)
    assert payload.expires is not None
    assert before + timedelta(seconds=86400) <= payload.expires
    assert payload.expires <= after + timedelta(seconds=86400)
    assert payload.is_expired() is False


def test_from_message_without_expires_uses_configured_ttl():
    # The test settings set CQRS_MESSAGE_TTL to 3600.
    before = datetime.now(tz=timezone.utc)
    payload = TransportPayload.from_message(_body())
    after = datetime.now(tz=timezone.utc)
    assert before + timedelta(seconds=3600) <= payload.expires <= after + timedelta(seconds=3600)


def test_from_message_expires_null_never_expires():
    payload = TransportPayload.from_message(_body(expires=None))
    assert payload.expires is None
    assert payload.is_expired() is False
    assert payload.to_dict()['expires'] is None


def test_from_message_without_retries():
    payload = TransportPayload.from_message(_body())
    assert payload.retries == 0
    assert payload.to_dict()['retries'] == 0


def test_from_message_optional_keys_missing():
    payload = TransportPayload.from_message(_body())
    assert payload.previous_data is None
    assert payload.correlation_id is None
    assert payload.meta is None


def test_from_message_parses_expires_string():
    payload = TransportPayload.from_message(_body(expires='2030-05-06T07:08:09+00:00'))
    assert payload.expires == datetime(2030, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


# --- is_expired ----------------------------------------------------------------------------


def test_is_expired_past():
    past = datetime.now(tz=timezone.utc) - timedelta(seconds=5)
    assert _full_payload(expires=past).is_expired() is True


def test_is_expired_future():
    future = datetime.now(tz=timezone.utc) + timedelta(seconds=60)
    assert _full_payload(expires=future).is_expired() is False


def test_is_expired_none():
    assert _full_payload(expires=None).is_expired() is False


def test_is_expired_naive_datetimes_are_utc():
    now_utc = datetime.now(tz=timezone.utc).replace(tzinfo=None)
    assert _full_payload(expires=now_utc - timedelta(seconds=5)).is_expired() is True
    assert _full_payload(expires=now_utc + timedelta(seconds=60)).is_expired() is False


def test_is_expired_of_a_received_past_message():
    payload = TransportPayload.from_message(_body(expires='2000-01-01T00:00:00+00:00'))
    assert payload.is_expired() is True


def test_expires_setter():
    payload = _full_payload(expires=None)
    payload.expires = datetime.now(tz=timezone.utc) - timedelta(seconds=1)
    assert payload.is_expired() is True


# --- a real master save --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_master_save_produces_spec_message(produced):
    before = datetime.now(tz=timezone.utc).replace(microsecond=0)
    instance = SimplestModel.objects.create(id=11, name='eleven')
    after = datetime.now(tz=timezone.utc)

    assert len(produced) == 1
    decoded = _wire(produced[0])
    assert set(decoded) == WIRE_KEYS
    assert decoded['signal_type'] == 'SAVE'
    assert decoded['cqrs_id'] == 'simplest'
    assert decoded['instance_pk'] == 11
    assert decoded['previous_data'] is None
    assert decoded['correlation_id'] is None
    assert decoded['retries'] == 0
    assert decoded['meta'] is None or decoded['meta'] == {}

    instance.refresh_from_db()
    assert decoded['instance_data'] == {
        'id': 11,
        'name': 'eleven',
        'cqrs_revision': 0,
        'cqrs_updated': str(instance.cqrs_updated),
    }

    expires = decoded['expires']
    assert isinstance(expires, str)
    assert '.' not in expires
    parsed = isoparse(expires)
    assert parsed.tzinfo is not None
    assert before + timedelta(seconds=3600) <= parsed <= after + timedelta(seconds=3600)

    # The mock transport applied it on the replica.
    replica = SimplestReplica.objects.get(pk=11)
    assert replica.name == 'eleven'
    assert replica.cqrs_revision == 0


@pytest.mark.django_db(transaction=True)
def test_master_update_and_delete_messages(produced):
    instance = SimplestModel.objects.create(id=12, name='a')
    instance.name = 'b'
    instance.save()
    instance.delete()

    decoded = [_wire(p) for p in produced]
    assert [d['signal_type'] for d in decoded] == ['SAVE', 'SAVE', 'DELETE']
    for message in decoded:
        assert set(message) == WIRE_KEYS
        assert message['instance_pk'] == 12
    assert decoded[1]['instance_data']['cqrs_revision'] == 1
    assert decoded[1]['instance_data']['name'] == 'b'
    delete_data = decoded[2]['instance_data']
    assert set(delete_data) == {'id', 'cqrs_revision', 'cqrs_updated'}
    assert delete_data['id'] == 12
    assert delete_data['cqrs_revision'] == 2
    assert not SimplestReplica.objects.filter(pk=12).exists()


@pytest.mark.parametrize(
    ('written', 'expected'),
    [
        ('2026-12-01T15:00:00+00:00', datetime(2026, 12, 1, 15, tzinfo=timezone.utc)),
        ('2026-12-01T15:00:00.5+00:00', datetime(2026, 12, 1, 15, 0, 0, 500000, timezone.utc)),
        ('2026-12-01T15:00:00', datetime(2026, 12, 1, 15)),
        ('Dec 1 2026 15:00 UTC', datetime(2026, 12, 1, 15, tzinfo=timezone.utc)),
    ],
)
def test_expires_is_read_from_iso_and_from_other_date_formats(written, expected):
    body = {
        'signal_type': 'SAVE',
        'cqrs_id': 'basic',
        'instance_data': {},
        'instance_pk': 1,
        'expires': written,
    }
    payload = TransportPayload.from_message(body)
    assert payload.expires == expected
    assert payload.to_dict()['expires'] == expected.replace(microsecond=0).isoformat()
