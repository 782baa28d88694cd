"""The demo master's Django admin in headless Chromium: "Synchronize selected books via CQRS".

The demo master runs ``manage.py runserver``; a demo replica runs ``cqrs_consume``. Titles are
changed on the master behind CQRS (``queryset.update()``, no message), so the replica shows
them only after the SYNC that the admin action publishes. Needs the Debian packages
``chromium`` and ``chromium-driver`` and the PyPI package ``selenium``: without them the test
fails (it is never skipped).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

from integration_tests.conftest import books, seed_demo, wait_books_equal
from tests.harness import TIMEOUT, bodies_before_marker, free_port, wait_for

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
PASSWORD = 'correct-horse-battery-staple'

CREATE_SUPERUSER = f"""
import json
from django.contrib.auth.models import User
User.objects.create_superuser('admin', 'admin@example.com', {PASSWORD!r})
print(json.dumps(User.objects.filter(is_superuser=True).count()))
"""

RETITLE_BEHIND_CQRS = """
import json
from catalog.models import Book
print(json.dumps(Book.objects.filter(pk__in=PKS).update(title='Synced from the admin')))
"""


@pytest.fixture
def open_browser(tmp_path):
    """``open_browser()``: headless Chromium driven by Selenium 4 through Debian's chromedriver.

    Called in the test body, so that a missing browser, driver or selenium is a test failure
    with a clear message (not a skip, nor a setup error). The browser is closed at teardown.
    """
    drivers = []

    def start():
        missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
        if missing:
            pytest.fail(
                f'{" and ".join(missing)} not found: install the Debian packages chromium and '
                'chromium-driver (apt-get install -y chromium chromium-driver)'
            )
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service as ChromeService
        except ImportError as exc:
            pytest.fail(f'selenium is not installed ({exc}): pip install selenium')

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            '--headless=new',
            '--no-sandbox',
            '--disable-gpu',
            '--disable-dev-shm-usage',
            '--disable-background-networking',
            '--disable-component-update',
            '--disable-sync',
            '--no-first-run',
            f'--user-data-dir={tmp_path / "chromium-profile"}',
            '--window-size=1400,1000',
        ):
            options.add_argument(argument)
        service = ChromeService(CHROMEDRIVER, log_output=str(tmp_path / 'chromedriver.log'))
        driver = webdriver.Chrome(options=options, service=service)
        drivers.append(driver)
        driver.set_page_load_timeout(TIMEOUT)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def start_runserver(master) -> str:
    """``manage.py runserver`` of the demo master on a free port; returns its base URL."""
    port = free_port()
    server = master.spawn('runserver', f'127.0.0.1:{port}', '--noreload')
    url = f'http://127.0.0.1:{port}'

    def serving():
        if server.poll() is not None:
            pytest.fail(f'runserver exited with {server.returncode}:\n{master.log_tail()}')
        try:
            with urllib.request.urlopen(f'{url}/admin/login/', timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_for(serving, message=lambda: f'runserver on {url}: {master.log_tail()}')
    return url


def test_admin_action_syncs_selected_books_to_the_replica(demo, open_browser, tmp_path):
    browser = open_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait

    master = demo.master()
    replica = demo.replica()
    replica.start_consumer(workers=1)
    seeded = seed_demo(master, count=3)
    wait_books_equal(master, replica)
    selected, other = seeded['books'][:2], seeded['books'][2]
    assert master.shell(CREATE_SUPERUSER) == 1
    url = start_runserver(master)

    # A capture queue sees everything published to the demo exchange; a marker closes each
    # check (see bodies_before_marker), so "nothing published" is read on the broker.
    connection = demo.broker.connect()
    channel = connection.channel()
    capture = demo.broker.queue('capture')
    channel.queue_declare(capture, durable=True)
    channel.queue_bind(capture, demo.broker.exchange, '#')

    # behind CQRS: every title changes on the master, nothing is published (the shell has
    # exited, so what it published would be confirmed, i.e. in the capture queue)
    assert master.shell(RETITLE_BEHIND_CQRS.replace('PKS', repr(seeded['books']))) == 3
    assert bodies_before_marker(channel, demo.broker.exchange, capture) == []

    wait = WebDriverWait(browser, TIMEOUT)
    try:
        browser.get(f'{url}/admin/login/?next=/admin/')
        browser.find_element(By.ID, 'id_username').send_keys('admin')
        browser.find_element(By.ID, 'id_password').send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, 'input[type="submit"]').click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, 'user-tools')))

        browser.get(f'{url}/admin/catalog/book/')
        wait.until(expected_conditions.presence_of_element_located((By.ID, 'result_list')))
        assert 'Synced from the admin' in browser.find_element(By.ID, 'result_list').text
        for pk in selected:
            browser.find_element(By.CSS_SELECTOR, f'input.action-select[value="{pk}"]').click()
        action = Select(browser.find_element(By.NAME, 'action'))
        action.select_by_visible_text('Synchronize selected books via CQRS')
        browser.find_element(By.CSS_SELECTOR, 'button[name="index"]').click()
        message = wait.until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, '.messagelist'))
        )
        assert '2 successfully synced. 0 failed: []' in message.text
        assert 'Failed' not in message.text
    finally:
        browser.save_screenshot(str(tmp_path / 'admin.png'))

    # exactly the two selected books were published, as SYNCs
    try:
        published = [
            json.loads(body)
            for body in bodies_before_marker(channel, demo.broker.exchange, capture)
        ]
    finally:
        connection.close()
    assert sorted((m['signal_type'], m['cqrs_id'], m['instance_pk']) for m in published) == [
        ('SYNC', 'demo.book', pk) for pk in sorted(selected)
    ]

    # the SYNCs reach the replica database; the unselected book keeps its old title there
    wait_for(
        lambda: {books(replica)[pk]['title'] for pk in selected} == {'Synced from the admin'},
        message=lambda: f'the SYNCed titles on the replica: {books(replica)}',
    )
    master_books, replica_books = books(master), books(replica)
    assert master_books[other]['title'] == 'Synced from the admin'
    assert replica_books[other] == {**master_books[other], 'title': 'Book 3'}
    assert {pk: row for pk, row in replica_books.items() if pk != other} == {
        pk: row for pk, row in master_books.items() if pk != other
    }


def _login(browser, wait, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    browser.get(f'{url}/admin/login/?next=/admin/')
    browser.find_element(By.ID, 'id_username').send_keys('admin')
    browser.find_element(By.ID, 'id_password').send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, 'input[type="submit"]').click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, 'user-tools')))


def test_item_03_admin_status_pages_of_the_replica_and_the_master(demo, open_browser, tmp_path):
    """Issue 12, item 3: from the admin index to the status page, on both services."""
    browser = open_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    master = demo.master()
    replica = demo.replica()
    replica.start_consumer(workers=1)
    seed_demo(master, count=3)
    wait_books_equal(master, replica)
    for service in (master, replica):
        assert service.shell(CREATE_SUPERUSER) == 1
    replica_url, master_url = start_runserver(replica), start_runserver(master)

    wait = WebDriverWait(browser, TIMEOUT)
    try:
        # replica: queue figures, the lag per CQRS_ID and the chart of the last hour
        _login(browser, wait, replica_url)
        browser.find_element(By.LINK_TEXT, 'Replication status').click()
        models = wait.until(expected_conditions.presence_of_element_located((By.ID, 'cqrs-models')))
        assert browser.current_url == f'{replica_url}/admin/dj_cqrs/status/'
        assert 'Replication status' in browser.title
        rows = {
            row.find_elements(By.TAG_NAME, 'td')[0].text: row
            for row in models.find_elements(By.CSS_SELECTOR, 'tbody tr')
        }
        assert {'demo.publisher', 'demo.author', 'demo.book'} <= set(rows)
        assert 'never' not in rows['demo.book'].text
        queues = browser.find_element(By.ID, 'cqrs-queues').text
        assert replica.queue in queues
        assert 'reachable' in browser.find_element(By.ID, 'cqrs-broker').text
        chart = browser.find_element(By.ID, 'cqrs-lag-chart')
        assert chart.tag_name == 'svg'
        series = chart.find_elements(By.CSS_SELECTOR, 'g.cqrs-lag-series')
        assert {'demo.publisher', 'demo.author', 'demo.book'} <= {
            group.get_attribute('data-cqrs-id') for group in series
        }
        assert all(group.find_elements(By.TAG_NAME, 'circle') for group in series)
        assert chart.size['width'] > 100 and chart.size['height'] > 50  # drawn, not empty
        browser.save_screenshot(str(tmp_path / 'replica-status.png'))

        # master: the outbox backlog and the broker, no replica section
        _login(browser, wait, master_url)
        browser.find_element(By.LINK_TEXT, 'Replication status').click()
        outbox = wait.until(expected_conditions.presence_of_element_located((By.ID, 'cqrs-outbox')))
        assert 'default' in outbox.text
        assert 'reachable' in browser.find_element(By.ID, 'cqrs-broker').text
        assert not browser.find_elements(By.ID, 'cqrs-lag-chart')
    finally:
        browser.save_screenshot(str(tmp_path / 'status.png'))
