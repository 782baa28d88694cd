"""Settings of the benchmark services (master and replica differ by their database file)."""

import os

SECRET_KEY = 'bench-only'
USE_TZ = True
DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'
INSTALLED_APPS = ['django.contrib.contenttypes', 'dj_cqrs', 'bench.benchapp']

if os.environ.get('BENCH_DB_ENGINE') == 'postgresql':
    DATABASES = {
        'default': {
            'ENGINE': 'django.db.backends.postgresql',
            'NAME': os.environ.get('BENCH_DB', 'cqrs_bench'),
            'USER': os.environ.get('BENCH_PG_USER', 'cqrs'),
            'PASSWORD': os.environ.get('BENCH_PG_PASSWORD', 'cqrs'),
            'HOST': os.environ.get('BENCH_PG_HOST', '127.0.0.1'),
            'PORT': os.environ.get('BENCH_PG_PORT', '5432'),
        },
    }
else:
    DATABASES = {
        'default': {
            'ENGINE': 'django.db.backends.sqlite3',
            'NAME': os.environ.get('BENCH_DB', '/tmp/cqrs-bench.sqlite3'),
            'OPTIONS': {
                'timeout': 30,
                'transaction_mode': 'IMMEDIATE',
                'init_command': 'PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;',
            },
        },
    }

CQRS = {
    'transport': os.environ.get('BENCH_TRANSPORT', 'dj_cqrs.transport.RabbitMQTransport'),
    'url': os.environ.get('BENCH_AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672/%2F'),
    'exchange': os.environ.get('BENCH_EXCHANGE', 'cqrs_bench'),
    'queue': os.environ.get('BENCH_QUEUE', 'bench_replica'),
    'publisher_confirms': os.environ.get('BENCH_CONFIRMS', '1') == '1',
    'master': {'CQRS_MESSAGE_TTL': 3600},
}
if os.environ.get('BENCH_QUEUE_TYPE'):
    CQRS['replica'] = {'queue_type': os.environ['BENCH_QUEUE_TYPE']}

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'handlers': {'stderr': {'class': 'logging.StreamHandler'}},
    'loggers': {
        'django-cqrs': {
            'level': os.environ.get('BENCH_LOG_LEVEL', 'WARNING'),
            'handlers': ['stderr'],
            'propagate': False,
        }
    },
}
