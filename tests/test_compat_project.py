"""Drop-in check: a project written against django-cqrs's documented API (tests/compat_project).

Everything here is what a django-cqrs user sees: the payloads on the wire, the arguments of the
replica hooks, the admin action and the management commands through ``call_command``, their
output compared byte for byte. The module passes unchanged against the original django-cqrs 3.1,
so each expectation is the original's behaviour. Test names carry the item numbers of issue 9.

Publishing is explicit: the ``published`` fixture replaces ``produce`` of the configured transport
with a wire round trip (JSON, as a broker would carry it) applied by the consumer controller.
"""

import io
import logging
import re
import sys
from decimal import Decimal

import pytest
import ujson
from django.conf import settings
from django.contrib import admin
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import RequestFactory
from django.utils.module_loading import import_string

from dj_cqrs.controller import consumer
from dj_cqrs.dataclasses import TransportPayload
from tests.compat_project.admin import AccountAdmin
from tests.compat_project.models import (
    Account,
    AccountHistory,
    AccountRef,
    Author,
    AuthorRef,
    Ticket,
    TicketEvents,
)

pytestmark = pytest.mark.django_db(transaction=True)

CQRS_UPDATED = '2024-05-06 07:08:09.123456+00:00'


class Published(list):
    """Message bodies as the replica receives them, in order."""

    consume = True  # apply each message on the replica as soon as it is produced


@pytest.fixture(autouse=True)
def published(monkeypatch):
    """Captures what the configured transport is given; the replica consumes it at once."""
    transport = import_string(settings.CQRS['transport'])
    bodies = Published()

    def produce(payload):
        body = ujson.loads(ujson.dumps(payload.to_dict()))
        bodies.append(body)
        if not bodies.consume:
            return payload
        received = TransportPayload.from_message(body)
        consumer.consume(
            TransportPayload(
                received.signal_type,
                received.cqrs_id,
                received.instance_data,
                received.pk,
                queue=payload.queue,
                previous_data=received.previous_data,
                correlation_id=received.correlation_id,
                expires=received.expires,
                retries=received.retries,
                meta=received.meta,
            ),
        )
        return payload

    monkeypatch.setattr(transport, 'produce', staticmethod(produce))
    TicketEvents.received.clear()
    yield bodies
    TicketEvents.received.clear()


@pytest.fixture
def stdin(monkeypatch):
    """Feeds text to the next command that reads standard input."""

    def feed(text):
        monkeypatch.setattr(sys, 'stdin', io.StringIO(text))

    return feed


def _accounts(*specs):
    return [
        Account.objects.create(id=pk, name=name, status=status, balance=balance)
        for pk, name, status, balance in specs
    ]


# Master side: what goes on the wire


def test_item_01_tracked_data_still_readable_after_publishing(published):
    (account,) = _accounts((1, 'Ann', 'active', '10.50'))
    account.name = 'Bob'
    account.save()

    assert published[-1]['previous_data'] == {'name': 'Ann'}
    assert account.get_tracked_fields_data() == {'name': 'Ann'}


def test_item_02_03_all_tracked_fields_revision_and_fk_names(published):
    (account, other) = _accounts((1, 'Ann', 'active', 0), (2, 'Bob', 'active', 0))
    author = Author.objects.create(id=1, name='Zoe', account=account)
    assert published[-1]['previous_data'] == {
        'id': None,
        'name': None,
        'account_id': None,
        'cqrs_revision': None,
    }

    author.name = 'Zoey'
    author.account = other
    author.save()
    assert published[-1]['previous_data'] == {'name': 'Zoe', 'account': 1, 'cqrs_revision': 0}

    author = Author.objects.get(pk=1)
    author.save()
    assert published[-1]['previous_data'] == {'cqrs_revision': 1}


def test_item_04_bulk_create_previous_data_has_every_tracked_field(published):
    Account.cqrs.bulk_create([Account(id=1, name='Ann'), Account(id=2, name='Bob')])

    assert [body['previous_data'] for body in published] == [
        {'name': None, 'status': None},
        {'name': None, 'status': None},
    ]
    assert sorted(AccountRef.objects.values_list('id', 'title')) == [(1, 'Ann'), (2, 'Bob')]


def test_item_05_bulk_update_previous_data_has_every_tracked_field(published):
    _accounts((1, 'Ann', 'active', 0))
    published.clear()

    Account.cqrs.bulk_update(Account.objects.filter(id=1), status='closed')

    assert [body['previous_data'] for body in published] == [{'name': 'Ann', 'status': 'active'}]
    assert AccountRef.objects.get(id=1).status == 'closed'


def test_item_06_one_message_per_transaction_and_a_saves_counter(published):
    with transaction.atomic():
        account = Account(id=1, name='Ann')
        assert (account.cqrs_saves_count, account.is_initial_cqrs_save) == (0, True)
        account.save()
        assert (account.cqrs_saves_count, account.is_initial_cqrs_save) == (1, True)
        account.name = 'Bob'
        account.save()
        assert (account.cqrs_saves_count, account.is_initial_cqrs_save) == (2, False)

    assert [(body['signal_type'], body['instance_data']['name']) for body in published] == [
        ('SAVE', 'Bob'),
    ]
    assert account.cqrs_saves_count == 0


def test_item_07_cqrs_sync_with_serializer_needs_no_query(published, django_assert_num_queries):
    Author.objects.create(id=1, name='Zoe')
    author = Author.objects.get(id=1)
    published.clear()
    published.consume = False

    with django_assert_num_queries(0):
        assert author.cqrs_sync() is True

    assert [(body['signal_type'], body['instance_data']['name']) for body in published] == [
        ('SYNC', 'Zoe'),
    ]


def test_item_07_cqrs_sync_of_a_deleted_row_is_false(published):
    (account,) = _accounts((1, 'Ann', 'active', 0))
    Account.objects.filter(id=1).delete()
    published.clear()

    assert account.cqrs_sync() is False
    assert published == []


def test_item_10_decimal_is_a_json_number(published):
    _accounts((1, 'Ann', 'active', Decimal('10.50')))

    assert published[-1]['instance_data']['balance'] == 10.5
    assert str(AccountRef.objects.get(id=1).balance) == '10.50'


# Replica side: what the hooks receive


def test_item_12_14_abstract_handler_receives_original_hook_arguments():
    ticket = Ticket.objects.create(id=1, title='Broken')
    ticket.title = 'Fixed'
    ticket.save()
    ticket.cqrs_sync()
    ticket.delete()

    assert TicketEvents.received == [
        ('save', 1, 'Broken'),
        ('save', 1, 'Fixed'),
        ('sync', 1, 'Fixed'),
        ('delete', 1, None),
    ]


def test_item_16_previous_data_uses_the_replica_names():
    (account,) = _accounts((1, 'Ann', 'active', 0))
    account.name = 'Bob'
    account.status = 'closed'
    account.save()

    history = AccountHistory.objects.order_by('id').values_list('field', 'old', 'new', 'sync')
    assert list(history) == [('status', 'active', 'closed', False), ('title', 'Ann', 'Bob', False)]
    assert AccountRef.objects.get(id=1).title == 'Bob'


def test_custom_serialization_replica_gets_the_serializer_output():
    (account,) = _accounts((1, 'Ann', 'active', 0))
    Author.objects.create(id=1, name='Zoe', account=account)

    author = AuthorRef.objects.get(id=1)
    assert (author.name, author.account_name, author.cqrs_revision) == ('Zoe', 'Ann', 0)
    assert author.last_previous_data == {
        'id': None,
        'name': None,
        'account_id': None,
        'cqrs_revision': None,
    }


# Admin


def test_item_18_admin_sync_action(admin_user, published):
    _accounts((1, 'Ann', 'active', 0), (2, 'Bob', 'active', 0))
    published.clear()
    request = RequestFactory().post('/admin/')
    request.user = admin_user
    model_admin = AccountAdmin(Account, admin.site)
    messages = []
    model_admin.message_user = lambda request, message, *args, **kwargs: messages.append(message)

    assert 'sync_items' in model_admin.get_actions(request)
    model_admin.sync_items(request, Account.objects.order_by('id'))

    assert messages == ['2 successfully synced. 0 failed: []']
    assert [(body['signal_type'], body['instance_pk']) for body in published] == [
        ('SYNC', 1),
        ('SYNC', 2),
    ]


def test_item_18_admin_without_actions(admin_user):
    class NoActionsAdmin(AccountAdmin):
        actions = None

    request = RequestFactory().get('/admin/')
    request.user = admin_user

    assert 'sync_items' not in NoActionsAdmin(Account, admin.site).get_actions(request)


# Commands: cqrs_sync


def test_item_21_cqrs_sync_output(capsys, published):
    _accounts((1, 'Ann', 'active', 0), (2, 'Bob', 'active', 0), (3, 'Cy', 'active', 0))
    published.clear()

    call_command('cqrs_sync', '--cqrs-id=compat_account', '-f={"id__in": [1, 2]}')

    assert capsys.readouterr() == ('Done!\n2 instance(s) synced.\n2 instance(s) processed.\n', '')
    assert [(body['signal_type'], body['instance_pk']) for body in published] == [
        ('SYNC', 1),
        ('SYNC', 2),
    ]


def test_item_21_cqrs_sync_without_filter_syncs_nothing(capsys, published):
    _accounts((1, 'Ann', 'active', 0))
    published.clear()

    call_command('cqrs_sync', '--cqrs-id=compat_account')

    assert capsys.readouterr() == ('No objects found for filter!\n', '')
    assert published == []


def test_item_21_cqrs_sync_calls_the_instance_and_goes_on_after_a_failure(
    capsys, monkeypatch, published
):
    _accounts((1, 'Ann', 'active', 0), (2, 'Bob', 'active', 0))
    published.clear()
    original = Account.cqrs_sync

    def cqrs_sync(self, *args, **kwargs):
        if self.pk == 1:
            raise RuntimeError('no route')
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Account, 'cqrs_sync', cqrs_sync)

    call_command('cqrs_sync', '--cqrs-id=compat_account', '-f={}', '--batch=1')

    out, err = capsys.readouterr()
    assert out == (
        '\nSync record failed for pk=1: RuntimeError: no route\n'
        'Done!\n1 instance(s) synced.\n2 instance(s) processed.\n'
    )
    assert err == ''
    assert [body['instance_pk'] for body in published] == [2]


def test_item_21_cqrs_sync_progress_text(capsys):
    _accounts((1, 'Ann', 'active', 0), (2, 'Bob', 'active', 0))

    call_command('cqrs_sync', '--cqrs-id=compat_account', '-f={}', '--progress', '-b=5')

    out, err = capsys.readouterr()
    assert re.fullmatch(
        r'Processing 2 records with batch size 5\n'
        r'\r2 of 2 processed - 100% with rate \d+\.\d rps, to go 0:00:00 \.\.\. {20}'
        r'Done!\n2 instance\(s\) synced\.\n2 instance\(s\) processed\.\n',
        out,
    ), out
    assert err == ''


def test_item_21_cqrs_sync_module_constants():
    from dj_cqrs.management.commands.cqrs_sync import DEFAULT_BATCH, DEFAULT_PROGRESS

    assert (DEFAULT_BATCH, DEFAULT_PROGRESS) == (10000, False)


# Commands: cqrs_bulk_dump and cqrs_bulk_load


def test_item_22_bulk_dump_file_is_byte_identical(tmp_path, capsys):
    (account,) = _accounts((1, 'Ann', 'active', '10.50'))
    Author.objects.create(id=1, name='Zoë / Ünal', account=account)
    Author.objects.create(id=2, name='Max')
    Author.objects.update(cqrs_updated=CQRS_UPDATED)
    Account.objects.update(cqrs_updated=CQRS_UPDATED)
    authors, accounts = tmp_path / 'authors.dump', tmp_path / 'accounts.dump'

    call_command('cqrs_bulk_dump', '--cqrs-id=compat_author', f'--output={authors}')
    call_command('cqrs_bulk_dump', '--cqrs-id=compat_account', '-o', str(accounts))

    assert authors.read_bytes().decode('ascii') == (
        'compat_author\n'
        '{"id":1,"name":"Zo\\u00eb \\/ \\u00dcnal","account":{"id":1,"name":"Ann"},'
        f'"cqrs_revision":0,"cqrs_updated":"{CQRS_UPDATED}"}}\n'
        '{"id":2,"name":"Max","account":null,'
        f'"cqrs_revision":0,"cqrs_updated":"{CQRS_UPDATED}"}}'
    )
    assert accounts.read_text() == (
        'compat_account\n'
        f'{{"id":1,"cqrs_revision":0,"cqrs_updated":"{CQRS_UPDATED}","name":"Ann",'
        '"status":"active","balance":10.5}'
    )
    assert capsys.readouterr() == (
        '',
        'Done!\n2 instance(s) saved.\n2 instance(s) processed.\n'
        'Done!\n1 instance(s) saved.\n1 instance(s) processed.\n',
    )


def test_item_22_bulk_dump_skips_a_failing_row(tmp_path, capsys, monkeypatch):
    _accounts((1, 'Ann', 'active', 0), (2, 'Bob', 'active', 0))
    original = Account.to_cqrs_dict

    def to_cqrs_dict(self, *args, **kwargs):
        if self.pk == 1:
            raise ValueError('cannot serialize')
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Account, 'to_cqrs_dict', to_cqrs_dict)
    out_file = tmp_path / 'accounts.dump'

    call_command('cqrs_bulk_dump', '--cqrs-id=compat_account', '-o', str(out_file))

    assert out_file.read_text().splitlines()[0] == 'compat_account'
    assert [ujson.loads(line)['id'] for line in out_file.read_text().splitlines()[1:]] == [2]
    assert capsys.readouterr().err == (
        '\nDump record failed for pk=1: ValueError: cannot serialize\n'
        'Done!\n1 instance(s) saved.\n2 instance(s) processed.\n'
    )


def test_item_22_bulk_dump_refuses_an_existing_file(tmp_path):
    out_file = tmp_path / 'accounts.dump'
    out_file.write_text('keep me')

    with pytest.raises(CommandError) as error:
        call_command('cqrs_bulk_dump', '--cqrs-id=compat_account', '-o', str(out_file))

    assert str(error.value) == f'File {out_file} exists!'
    assert out_file.read_text() == 'keep me'


def test_item_23_bulk_load_reports_each_bad_line_and_keeps_the_good_ones(tmp_path, capsys):
    dump = tmp_path / 'authors.dump'
    dump.write_text(
        'compat_author\n'
        f'{{"id":1,"name":"Zoe","account":null,"cqrs_revision":3,"cqrs_updated":"{CQRS_UPDATED}"}}\n'
        'not json\n'
        '{"id":2,"name":"No revision"}\n'
        f'{{"id":3,"account":null,"cqrs_revision":0,"cqrs_updated":"{CQRS_UPDATED}"}}\n'
        f'{{"id":4,"name":"Max","account":{{"id":1,"name":"Ann"}},"cqrs_revision":0,'
        f'"cqrs_updated":"{CQRS_UPDATED}"}}'
    )

    call_command('cqrs_bulk_load', f'--input={dump}', '--batch=10')

    assert capsys.readouterr() == (
        '',
        "Dump file can't be parsed: line 3!\n"
        "Instance can't be saved: line 4!\n"
        "Unexpected error: line 5! 'name'\n"
        'Done!\n2 instance(s) loaded.\n',
    )
    assert list(AuthorRef.objects.order_by('id').values_list('id', 'name', 'cqrs_revision')) == [
        (1, 'Zoe', 3),
        (4, 'Max', 0),
    ]


def test_item_23_bulk_load_clear_with_a_value(tmp_path, capsys):
    AccountRef.objects.create(
        id=9, title='Old', status='active', balance=0, cqrs_revision=0, cqrs_updated=CQRS_UPDATED
    )
    dump = tmp_path / 'accounts.dump'
    dump.write_text(
        'compat_account\n'
        f'{{"id":1,"cqrs_revision":0,"cqrs_updated":"{CQRS_UPDATED}","name":"Ann",'
        '"status":"active","balance":10.5}'
    )

    call_command('cqrs_bulk_load', '-i', str(dump), '--clear=true')

    assert capsys.readouterr().err == 'Done!\n1 instance(s) loaded.\n'
    assert list(AccountRef.objects.values_list('id', 'title')) == [(1, 'Ann')]
    assert str(AccountRef.objects.get(id=1).balance) == '10.50'


def test_item_23_bulk_load_missing_and_empty_files(tmp_path):
    missing, empty = tmp_path / 'missing.dump', tmp_path / 'empty.dump'
    empty.write_text('')

    with pytest.raises(CommandError) as error:
        call_command('cqrs_bulk_load', f'--input={missing}')
    assert str(error.value) == f"File {missing} doesn't exist!"

    with pytest.raises(CommandError) as error:
        call_command('cqrs_bulk_load', f'--input={empty}')
    assert str(error.value) == f'File {empty} is empty!'


# Commands: the diff pipelines


def _diff_header(text, cqrs_id, suffix=''):
    header, _, rest = text.partition('\n')
    assert re.fullmatch(rf'{cqrs_id},\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+00:00{suffix}', header)
    return header, rest


def test_item_24_diff_pipeline_resyncs_stale_replica_rows(capsys, stdin, published):
    _accounts(
        (1, 'Ann', 'active', 0),
        (2, 'Bob', 'active', 0),
        (3, 'Cy', 'hidden', 0),
    )
    AccountRef.objects.filter(id=2).delete()
    published.clear()

    call_command('cqrs_diff_master', '--cqrs-id=compat_account')
    master_out, master_err = capsys.readouterr()
    header, packages = _diff_header(master_out, 'compat_account')
    assert (packages, master_err) == ('[[1,0],[2,0]]\n', '')

    stdin(master_out)
    call_command('cqrs_diff_replica')
    replica_out, replica_err = capsys.readouterr()
    assert replica_out == f'{header},replica\n[2]\n'
    assert replica_err == 'PK to resync: {2}\n'

    stdin(replica_out)
    call_command('cqrs_diff_sync')
    assert capsys.readouterr() == ('Done!\n1 instance(s) synced.\n1 instance(s) processed.\n', '')
    assert [(body['signal_type'], body['instance_pk']) for body in published] == [('SYNC', 2)]
    assert sorted(AccountRef.objects.values_list('id', flat=True)) == [1, 2]


def test_item_24_deleted_diff_pipeline_removes_replica_only_rows(capsys, stdin):
    _accounts((1, 'Ann', 'active', 0))
    AccountRef.objects.create(
        id=9, title='Gone', status='active', balance=0, cqrs_revision=0, cqrs_updated=CQRS_UPDATED
    )

    call_command('cqrs_deleted_diff_replica', '--cqrs-id=compat_account')
    replica_out, replica_err = capsys.readouterr()
    header, packages = _diff_header(replica_out, 'compat_account')
    assert (sorted(ujson.loads(packages)), replica_err) == ([1, 9], '')

    stdin(replica_out)
    call_command('cqrs_deleted_diff_master')
    master_out, master_err = capsys.readouterr()
    assert master_out == f'{header}\n[9]\n'
    assert master_err == 'PK to delete: [9]\n'

    stdin(master_out)
    call_command('cqrs_deleted_sync_replica')
    assert capsys.readouterr() == ('', '')
    assert list(AccountRef.objects.values_list('id', flat=True)) == [1]


@pytest.mark.parametrize('command', ['cqrs_diff_master', 'cqrs_deleted_diff_replica'])
def test_item_24_diff_with_an_empty_filter_result(command, capsys):
    _accounts((1, 'Ann', 'active', 0))

    call_command(command, '--cqrs-id=compat_account', '-f={"id": 5}')

    assert capsys.readouterr() == ('', 'No objects found for filter!\n')


# Commands: errors shared by all


@pytest.mark.parametrize(
    'command',
    ['cqrs_sync', 'cqrs_bulk_dump', 'cqrs_diff_master', 'cqrs_deleted_diff_replica'],
)
def test_item_25_wrong_cqrs_id(command, tmp_path):
    with pytest.raises(CommandError) as error:
        call_command(command, '--cqrs-id=compat_nope', **_output_option(command, tmp_path))

    assert str(error.value) == 'Wrong CQRS ID: compat_nope!'


@pytest.mark.parametrize(
    'command',
    [
        'cqrs_diff_replica',
        'cqrs_diff_sync',
        'cqrs_deleted_diff_master',
        'cqrs_deleted_sync_replica',
    ],
)
def test_item_25_wrong_cqrs_id_on_stdin(command, stdin):
    stdin('compat_nope,2024-05-06 07:08:09+00:00\n')

    with pytest.raises(CommandError) as error:
        call_command(command)

    assert str(error.value) == 'Wrong CQRS ID: compat_nope!'


def test_item_25_wrong_cqrs_id_in_a_dump(tmp_path):
    dump = tmp_path / 'nope.dump'
    dump.write_text('compat_nope\n')

    with pytest.raises(CommandError) as error:
        call_command('cqrs_bulk_load', '-i', str(dump))

    assert str(error.value) == 'Wrong CQRS ID: compat_nope!'


@pytest.mark.parametrize('command', ['cqrs_sync', 'cqrs_diff_master', 'cqrs_deleted_diff_replica'])
@pytest.mark.parametrize(
    ('filter_', 'message'),
    [
        ('[1, 2]', 'Bad filter kwargs!'),
        # The JSON parser's message may follow.
        ('{bad json', 'Bad filter kwargs!...'),
        ('{"nope": 1}', "Bad filter kwargs! Cannot resolve keyword 'nope' into field. Choices..."),
    ],
)
def test_item_25_bad_filter(command, filter_, message):
    _accounts((1, 'Ann', 'active', 0))

    with pytest.raises(CommandError) as error:
        call_command(command, '--cqrs-id=compat_account', f'--filter={filter_}')

    if message.endswith('...'):
        assert str(error.value).startswith(message[:-3])
    else:
        assert str(error.value) == message


def _output_option(command, tmp_path):
    return {'output': str(tmp_path / 'out.dump')} if command == 'cqrs_bulk_dump' else {}


# Log lines operators alert on


def test_item_28_consumer_log_lines(caplog):
    caplog.set_level(logging.DEBUG, logger='django-cqrs')

    consumer.consume(TransportPayload('SAVE', 'compat_nope', {'id': 1}, 1))
    consumer.consume(TransportPayload('BAD', 'compat_account', {'id': 1}, 1))
    consumer.consume(TransportPayload('SAVE', 'compat_account', {'id': 1}, 1))
    consumer.consume(
        TransportPayload(
            'SAVE', 'compat_account', {'cqrs_revision': 0, 'cqrs_updated': CQRS_UPDATED}, 1
        ),
    )
    consumer.consume(
        TransportPayload(
            'SAVE', 'compat_author', {'cqrs_revision': 0, 'cqrs_updated': CQRS_UPDATED}, 1
        ),
    )

    assert [record.getMessage() for record in caplog.records] == [
        'No model with such CQRS_ID: compat_nope.',
        'Bad signal type "BAD" for CQRS_ID "compat_account".',
        'CQRS sync fields are not provided in data (compat_account).',
        'Bad master-replica mapping for id (compat_account).',
        'CQRS PK is not provided in data (compat_author).',
    ]
