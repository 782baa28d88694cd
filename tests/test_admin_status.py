"""Issue 12, item 3: the replication status page of the admin, through the Django test client.

``dj_cqrs.status.collect`` / ``lag_history`` are replaced by known figures, so that the page is
checked cell by cell; the last test renders the real figures of the test project.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import SimpleTestCase
from django.urls import reverse

from dj_cqrs import status as cqrs_status
from dj_cqrs.admin import CQRSStatusAdmin, lag_chart
from dj_cqrs.models import Status
from dj_cqrs.status import OutboxStatus, QueueStatus, ReplicaModelStatus
from dj_cqrs.status import Status as StatusReport

pytestmark = pytest.mark.django_db

URL = '/admin/dj_cqrs/status/'
APPLIED = datetime(2024, 5, 1, 12, 0, 30, tzinfo=timezone.utc)
UPDATED = datetime(2024, 5, 1, 12, 0, 18, tzinfo=timezone.utc)

# Django's own assertions (pytest_django.asserts needs Django 5 on import).
_django = SimpleTestCase()
assertInHTML = _django.assertInHTML
assertRedirects = _django.assertRedirects


def replica_report(**changes) -> StatusReport:
    report = StatusReport(
        side='replica',
        broker='127.0.0.1:5672/',
        broker_reachable=True,
        broker_error=None,
        queues=[
            QueueStatus(name='replica', ready=7, unacknowledged=2, consumers=3),
            QueueStatus(name='dead_letter_replica', ready=4, unacknowledged=None, consumers=None),
        ],
        dead_letters=4,
        models=[
            ReplicaModelStatus(
                cqrs_id='basic', last_applied=APPLIED, last_master_updated=UPDATED, lag=12.5
            ),
            ReplicaModelStatus(
                cqrs_id='never_seen', last_applied=None, last_master_updated=None, lag=None
            ),
        ],
        outbox=[],
    )
    for name, value in changes.items():
        setattr(report, name, value)
    return report


def master_report(**changes) -> StatusReport:
    report = replica_report(
        side='master',
        queues=[],
        dead_letters=None,
        models=[],
        outbox=[
            OutboxStatus(database='default', rows=3, oldest_age=42.0),
            OutboxStatus(database='other', rows=0, oldest_age=None),
        ],
    )
    for name, value in changes.items():
        setattr(report, name, value)
    return report


@pytest.fixture
def figures(monkeypatch):
    """What ``collect()`` / ``lag_history()`` return to the page: set ``report`` / ``history``."""

    class Figures:
        report = replica_report()
        history: dict = {}
        lag_history_calls = 0

    def lag_history(since=timedelta(hours=1)):
        Figures.lag_history_calls += 1
        return Figures.history

    monkeypatch.setattr(cqrs_status, 'collect', lambda side=None: Figures.report)
    monkeypatch.setattr(cqrs_status, 'lag_history', lag_history)
    return Figures


def _user(username, *, staff=True, superuser=False, permissions=()):
    user = get_user_model().objects.create_user(
        username, password='pw', is_staff=staff, is_superuser=superuser
    )
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    return user


@pytest.fixture
def superuser_client(client):
    client.force_login(_user('root', superuser=True))
    return client


@pytest.fixture
def permitted_client(client):
    client.force_login(_user('operator', permissions=['view_status']))
    return client


def _html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def test_item_03_page_is_registered_by_the_admin_integration():
    assert reverse('admin:dj_cqrs_status') == URL
    assert reverse('admin:dj_cqrs_status_changelist') == URL
    assert isinstance(admin.site._registry[Status], CQRSStatusAdmin)
    assert not Status._meta.managed
    assert Status._meta.default_permissions == ('view',)


def test_item_03_superuser_sees_the_replica_figures(superuser_client, figures):
    html = _html(superuser_client.get(URL))

    assert '<title>Replication status' in html
    assertInHTML('<td>127.0.0.1:5672/</td>', html)
    assertInHTML('<td class="">reachable</td>', html)
    assertInHTML(
        '<tr><td>replica</td><td class="number">7</td><td class="number">2</td>'
        '<td class="number">3</td></tr>',
        html,
    )
    # what the transport cannot report is "unknown", never 0
    assertInHTML(
        '<tr><td>dead_letter_replica</td><td class="number">4</td>'
        '<td class="number">unknown</td><td class="number">unknown</td></tr>',
        html,
    )
    assertInHTML('<tr><th scope="row">Dead letters</th><td class="number">4</td></tr>', html)
    assertInHTML(
        '<tr><td>basic</td><td>2024-05-01 12:00:30</td><td>2024-05-01 12:00:18</td>'
        '<td class="number">12.5 s</td></tr>',
        html,
    )
    assertInHTML(
        '<tr><td>never_seen</td><td>never</td><td>never</td><td class="number">unknown</td></tr>',
        html,
    )
    assert 'id="cqrs-outbox"' not in html  # a replica has no outbox section


def test_item_03_unknown_dead_letters(superuser_client, figures):
    figures.report = replica_report(dead_letters=None)
    html = _html(superuser_client.get(URL))
    assertInHTML('<tr><th scope="row">Dead letters</th><td class="number">unknown</td></tr>', html)


def test_item_03_master_figures(superuser_client, figures):
    figures.report = master_report()
    html = _html(superuser_client.get(URL))

    assertInHTML(
        '<tr><td>default</td><td class="number">3</td><td class="number">42.0 s</td></tr>', html
    )
    assertInHTML('<tr><td>other</td><td class="number">0</td><td class="number">-</td></tr>', html)
    assert 'id="cqrs-queues"' not in html
    assert 'id="cqrs-lag-chart"' not in html
    assert figures.lag_history_calls == 0  # the chart is a replica's


def test_item_03_broker_unreachable(superuser_client, figures):
    figures.report = master_report(
        broker_reachable=False, broker_error='[Errno 111] Connection refused'
    )
    html = _html(superuser_client.get(URL))
    assertInHTML('<td class="unreachable">unreachable: [Errno 111] Connection refused</td>', html)


def test_item_03_staff_with_the_view_permission_sees_the_page(permitted_client, figures):
    html = _html(permitted_client.get(URL))
    assertInHTML('<tr><th scope="row">Dead letters</th><td class="number">4</td></tr>', html)


def test_item_03_anonymous_is_redirected_to_the_login(client, figures):
    assertRedirects(client.get(URL), f'/admin/login/?next={URL}')


def test_item_03_non_staff_is_redirected_to_the_login(client, figures):
    client.force_login(_user('customer', staff=False, permissions=['view_status']))
    assertRedirects(client.get(URL), f'/admin/login/?next={URL}')


def test_item_03_staff_without_the_permission_is_refused(client, figures):
    client.force_login(_user('clerk'))
    assert client.get(URL).status_code == 403


def _index_links(client) -> list[str]:
    html = _html(client.get('/admin/'))
    return re.findall(rf'<a href="{URL}"[^>]*>([^<]*)</a>', html)


def test_item_03_admin_index_links_to_the_page(superuser_client, figures):
    assert 'Replication status' in _index_links(superuser_client)


def test_item_03_admin_index_links_for_a_permitted_staff_user(permitted_client, figures):
    assert 'Replication status' in _index_links(permitted_client)


def test_item_03_admin_index_has_no_link_without_the_permission(client, figures):
    client.force_login(_user('clerk', permissions=['view_simplestmodel']))
    assert _index_links(client) == []


def _svg_series(html: str) -> dict[str, list[tuple[float, float]]]:
    series = {}
    for cqrs_id, points in re.findall(
        r'<g class="cqrs-lag-series" data-cqrs-id="([^"]+)">\s*<polyline[^>]* points="([^"]*)"',
        html,
    ):
        series[cqrs_id] = [tuple(map(float, point.split(','))) for point in points.split()]
    return series


def test_item_03_replica_page_draws_the_lag_of_the_last_hour(superuser_client, figures):
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    figures.history = {
        'basic': [(now - timedelta(minutes=50), 2.0), (now - timedelta(minutes=10), 8.0)],
        'author': [(now - timedelta(minutes=5), 1.0)],
    }
    html = _html(superuser_client.get(URL))

    assert html.count('id="cqrs-lag-chart"') == 1
    assert 'id="cqrs-lag-chart"' in html
    series = _svg_series(html)
    assert sorted(series) == ['author', 'basic']
    # y: lags 2 s and 8 s on an axis from 0 to 10 s, 166 px high from y = 10
    assert [y for _, y in series['basic']] == [142.8, 43.2]
    assert [y for _, y in series['author']] == [159.4]
    # x: older samples on the left, all within the plot (x from 56 to 630)
    (x1, _), (x2, _) = series['basic']
    assert 56 < x1 < x2 < series['author'][0][0] < 630
    assert '<title>basic' in html and ': 8.0 s</title>' in html
    assert '>10.0 s</text>' in html  # the top of the y axis
    assert 'src="http' not in html and '<script' not in html.split('id="cqrs-lag-chart"')[1]


def test_item_03_replica_page_without_samples(superuser_client, figures):
    html = _html(superuser_client.get(URL))
    assert 'id="cqrs-lag-chart"' not in html
    assert 'No message applied in the last hour.' in html


def test_item_03_lag_chart_layout():
    now = datetime(2024, 5, 1, 13, 0, tzinfo=timezone.utc)
    history = {
        'b': [(now - timedelta(minutes=60), 0.5), (now - timedelta(minutes=30), 3.0)],
        'a': [(now - timedelta(minutes=90), 1.0), (now, 30.0)],
        'empty': [],
    }
    chart = lag_chart(history, now, width=400, height=140)

    assert chart.max_lag == 50.0
    assert [s.cqrs_id for s in chart.series] == ['a', 'b']
    # plot: x from 56 to 390 (334 px), y from 10 to 116 (106 px); older samples clamp to x=56
    assert chart.series[0].points == '56.0,113.9 390.0,52.4'
    assert chart.series[1].points == '56.0,114.9 223.0,109.6'
    assert chart.series[0].color != chart.series[1].color
    assert [label for _, label in chart.x_ticks] == [
        '-60 min',
        '-45 min',
        '-30 min',
        '-15 min',
        'now',
    ]
    assert [label for _, label in chart.y_ticks] == ['0.0 s', '25.0 s', '50.0 s']
    assert lag_chart({'a': []}, now) is None
    assert lag_chart({}, now) is None


@pytest.mark.django_db(databases=['default', 'other'])
def test_item_03_page_renders_the_real_figures(superuser_client):
    """No stand-in: ``collect()`` and ``lag_history()`` of the test project (loopback)."""
    report = cqrs_status.collect()
    html = _html(superuser_client.get(URL))

    assertInHTML(f'<tr><th scope="row">Side</th><td>{report.side}</td></tr>', html)
    assertInHTML(f'<td>{report.broker}</td>', html)
    for outbox in report.outbox:
        assertInHTML(f'<td>{outbox.database}</td>', html)
    for model in report.models:
        assertInHTML(f'<td>{model.cqrs_id}</td>', html)
