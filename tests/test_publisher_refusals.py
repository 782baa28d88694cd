"""The RabbitMQ publisher's schedule for messages the broker refuses (nacks), on a fake clock.

A refused message is published again after a delay that doubles at each refusal up to
``_REFUSED_RETRY_MAX``; its first refusal is logged once (ERROR) and later refusals only in a
summary (WARNING) at most every ``_REFUSED_REPORT_EVERY`` seconds. The broker side (a full
queue refusing publishes, the outbox keeping the refused rows) is
``tests/transport/test_relay_faults.py``.
"""

import logging
from types import SimpleNamespace

import pytest

from dj_cqrs.transport import rabbit_mq
from dj_cqrs.transport.rabbit_mq import (
    _REFUSED_REPORT_EVERY,
    _REFUSED_RETRY_MAX,
    _REFUSED_RETRY_MIN,
    _Message,
    _Publisher,
)


class Clock:
    """``time.monotonic`` of the module under test, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(rabbit_mq, 'time', SimpleNamespace(monotonic=clock.monotonic))
    return clock


@pytest.fixture
def publisher(monkeypatch):
    """A publisher whose ``basic_publish`` only records the routing keys it is given."""
    publisher = _Publisher()
    published = publisher.published_keys = []
    monkeypatch.setattr(
        publisher,
        '_basic_publish',
        lambda message, publish=None: published.append(message.routing_key),
    )
    return publisher


def message(routing_key='simplest', on_delivery=None):
    return _Message('exchange', routing_key, b'{}', None, on_delivery)


def refusal_logs(caplog):
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.name == 'django-cqrs'
    ]


def test_the_delay_doubles_at_each_refusal_up_to_the_maximum(clock, publisher):
    refused = message()
    delays = []
    for _refusal in range(12):
        publisher._refused(refused)
        delays.append(round(refused.due - clock.now, 6))
        publisher._nacked.clear()

    expected = [min(_REFUSED_RETRY_MAX, _REFUSED_RETRY_MIN * 2**n) for n in range(12)]
    assert delays == [round(delay, 6) for delay in expected]
    assert delays[:3] == [0.1, 0.2, 0.4]
    assert delays[-2:] == [_REFUSED_RETRY_MAX, _REFUSED_RETRY_MAX]
    assert refused.refusals == 12


def test_only_due_messages_are_published_again(clock, publisher):
    first, second = message('first'), message('second')
    publisher._refused(first)
    clock.now += 0.05
    publisher._refused(second)
    publisher._refusing_channel = False

    clock.now += 0.06  # first is due (0.1 s after its refusal), second is not
    publisher._republish_nacked()
    assert publisher.published_keys == ['first']
    assert publisher._nacked == [second]

    clock.now += 0.05
    publisher._republish_nacked()
    assert publisher.published_keys == ['first', 'second']
    assert publisher._nacked == []


def test_a_refused_message_is_reported_to_its_callback_and_logged_once(clock, publisher, caplog):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    reports = []
    refused = message(on_delivery=reports.append)

    for _refusal in range(5):
        publisher._refused(refused)
        clock.now = refused.due

    errors = [text for level, text in refusal_logs(caplog) if level == 'ERROR']
    assert errors == [
        'CQRS message was refused by the broker (routing key simplest); publishing it again later.'
    ]
    assert reports == [False], 'the producer hears of the first refusal only'


def test_later_refusals_are_summarised_at_most_once_per_period(clock, publisher, caplog):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')
    refused = [message(f'key{n}') for n in range(3)]
    for each in refused:
        publisher._refused(each)  # first refusals: one ERROR each
    publisher._nacked.clear()

    for _round in range(4):  # refused again and again within one period
        for each in refused:
            publisher._refused(each)
        publisher._nacked.clear()
        clock.now += 1
    warnings_in_first_period = [t for level, t in refusal_logs(caplog) if level == 'WARNING']

    clock.now += _REFUSED_REPORT_EVERY
    publisher._refused(refused[0])

    logs = refusal_logs(caplog)
    assert [level for level, _text in logs].count('ERROR') == 3
    assert len(warnings_in_first_period) == 1
    assert [level for level, _text in logs].count('WARNING') == 2
    assert 'still refused by the broker' in logs[-1][1]
