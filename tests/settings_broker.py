"""Settings of a replica (or master) service process started by the broker tests.

The database, broker URL, transport, exchange and queue come from the environment so each test
gets services of its own on a shared broker. The database is the SQLite file ``CQRS_TEST_DB``,
or with ``CQRS_TEST_DB_ENGINE=postgresql`` the PostgreSQL database ``CQRS_TEST_DB_NAME`` on the
server of ``tests.settings_pg`` (``CQRS_TEST_PG_USER``, ``_PASSWORD``, ``_HOST``, ``_PORT``).
"""

import os

import django

from tests.settings import *  # noqa: F403

if os.environ.get('CQRS_TEST_DB_ENGINE') == 'postgresql':
    _DB = os.environ.get('CQRS_TEST_DB_NAME', 'cqrs_broker_test')
    DATABASES = {
        'default': {
            'ENGINE': 'django.db.backends.postgresql',
            'NAME': _DB,
            'USER': os.environ.get('CQRS_TEST_PG_USER', 'cqrs'),
            'PASSWORD': os.environ.get('CQRS_TEST_PG_PASSWORD', 'cqrs'),
            'HOST': os.environ.get('CQRS_TEST_PG_HOST', '127.0.0.1'),
            'PORT': os.environ.get('CQRS_TEST_PG_PORT', '5432'),
            'TEST': {'NAME': _DB},
        },
    }
else:
    _DB = os.environ.get('CQRS_TEST_DB', '/tmp/cqrs-broker-test.sqlite3')
    DATABASES = {
        'default': {
            'ENGINE': 'django.db.backends.sqlite3',
            'NAME': _DB,
            'TEST': {'NAME': _DB},
            'OPTIONS': {'timeout': 30},
        },
    }
    if django.VERSION >= (5, 1):
        DATABASES['default']['OPTIONS'].update(
            transaction_mode='IMMEDIATE', init_command='PRAGMA journal_mode=WAL;'
        )

CQRS = {
    'transport': os.environ.get('CQRS_TEST_TRANSPORT', 'dj_cqrs.transport.RabbitMQTransport'),
    'url': os.environ.get('CQRS_TEST_URL', 'amqp://guest:guest@127.0.0.1:5672/%2F'),
    'exchange': os.environ.get('CQRS_TEST_EXCHANGE', 'cqrs_test'),
    'queue': os.environ.get('CQRS_TEST_QUEUE', 'replica'),
    'consumer_prefetch_count': 50,
    'master': {'CQRS_MESSAGE_TTL': 3600},
    'replica': {
        'CQRS_MAX_RETRIES': int(os.environ.get('CQRS_TEST_MAX_RETRIES', '3')),
        # Whole seconds: like the original, a float falls back to the default 2 with a warning.
        'CQRS_RETRY_DELAY': int(os.environ.get('CQRS_TEST_RETRY_DELAY', '1')),
        'delay_queue_max_size': int(os.environ.get('CQRS_TEST_DELAY_QUEUE', '1000')),
    },
}

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'formatters': {'plain': {'format': '%(asctime)s %(process)d %(levelname)s %(message)s'}},
    'handlers': {'stderr': {'class': 'logging.StreamHandler', 'formatter': 'plain'}},
    'loggers': {
        'django-cqrs': {
            'level': os.environ.get('CQRS_TEST_LOG_LEVEL', 'WARNING'),
            'handlers': ['stderr'],
            'propagate': False,
        }
    },
}
