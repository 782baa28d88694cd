"""Settings of the demo replica service: keeps read-only copies and JOINs them locally.

Environment: DEMO_DATA_DIR (SQLite files, default ``examples/demo_project/.data``),
DEMO_AMQP_URL, DEMO_EXCHANGE, DEMO_QUEUE, DEMO_LOG_LEVEL, DEMO_DEBUG, DEMO_SECRET_KEY,
DEMO_MASTER_URL. DEMO_DB_ENGINE=postgresql switches to PostgreSQL: database DEMO_DB_NAME
(default ``cqrs_demo_replica``), DEMO_PG_USER, DEMO_PG_PASSWORD, DEMO_PG_HOST, DEMO_PG_PORT
(default cqrs / cqrs / 127.0.0.1 / 5432).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get('DEMO_DATA_DIR') or BASE_DIR.parent / '.data').resolve()

SECRET_KEY = os.environ.get('DEMO_SECRET_KEY', 'demo-replica-insecure-key')
DEBUG = os.environ.get('DEMO_DEBUG', '1') == '1'
ALLOWED_HOSTS = ['*']

# The admin is here for django-cqrs's replication status page (/admin/dj_cqrs/status/).
INSTALLED_APPS = [
    'django.contrib.admin',
    'django.contrib.auth',
    'django.contrib.contenttypes',
    'django.contrib.sessions',
    'django.contrib.messages',
    'django.contrib.staticfiles',
    'dj_cqrs',
    'replica',
]

MIDDLEWARE = [
    'django.middleware.security.SecurityMiddleware',
    'django.contrib.sessions.middleware.SessionMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.middleware.csrf.CsrfViewMiddleware',
    'django.contrib.auth.middleware.AuthenticationMiddleware',
    'django.contrib.messages.middleware.MessageMiddleware',
    'django.middleware.clickjacking.XFrameOptionsMiddleware',
]

ROOT_URLCONF = 'replica_service.urls'
WSGI_APPLICATION = 'replica_service.wsgi.application'

TEMPLATES = [
    {
        'BACKEND': 'django.template.backends.django.DjangoTemplates',
        'DIRS': [],
        'APP_DIRS': True,
        'OPTIONS': {
            'context_processors': [
                'django.template.context_processors.request',
                'django.contrib.auth.context_processors.auth',
                'django.contrib.messages.context_processors.messages',
            ],
        },
    },
]

# SQLite by default; PostgreSQL with DEMO_DB_ENGINE=postgresql (the integration tests' run on
# PostgreSQL gives every service a database of its own).
if os.environ.get('DEMO_DB_ENGINE') == 'postgresql':
    DATABASES = {
        'default': {
            'ENGINE': 'django.db.backends.postgresql',
            'NAME': os.environ.get('DEMO_DB_NAME', 'cqrs_demo_replica'),
            'USER': os.environ.get('DEMO_PG_USER', 'cqrs'),
            'PASSWORD': os.environ.get('DEMO_PG_PASSWORD', 'cqrs'),
            'HOST': os.environ.get('DEMO_PG_HOST', '127.0.0.1'),
            'PORT': os.environ.get('DEMO_PG_PORT', '5432'),
        },
    }
else:
    # Two consumer workers write to this file at once: WAL, IMMEDIATE transactions and a lock
    # timeout keep SQLite from failing with "database is locked".
    DATABASES = {
        'default': {
            'ENGINE': 'django.db.backends.sqlite3',
            'NAME': DATA_DIR / 'replica.sqlite3',
            'OPTIONS': {
                'timeout': 30,
                'transaction_mode': 'IMMEDIATE',
                'init_command': 'PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;',
            },
        },
    }

DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'
LANGUAGE_CODE = 'en-us'
TIME_ZONE = 'UTC'
USE_I18N = True
USE_TZ = True
STATIC_URL = 'static/'

DEMO_MASTER_URL = os.environ.get('DEMO_MASTER_URL', 'http://127.0.0.1:8000/')

CQRS = {
    'transport': 'dj_cqrs.transport.RabbitMQTransport',
    'url': os.environ.get('DEMO_AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672/%2F'),
    'exchange': os.environ.get('DEMO_EXCHANGE', 'cqrs_demo'),
    'queue': os.environ.get('DEMO_QUEUE', 'cqrs_demo_replica'),
    'replica': {
        'CQRS_MAX_RETRIES': 5,
        'CQRS_RETRY_DELAY': 1,
    },
}

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'formatters': {
        'demo': {'format': '%(asctime)s replica[%(process)d] %(levelname)s %(message)s'},
    },
    'handlers': {'stderr': {'class': 'logging.StreamHandler', 'formatter': 'demo'}},
    'loggers': {
        'django-cqrs': {
            'handlers': ['stderr'],
            'level': os.environ.get('DEMO_LOG_LEVEL', 'INFO'),
            'propagate': False,
        },
    },
}
