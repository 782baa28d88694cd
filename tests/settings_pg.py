"""The test project on PostgreSQL (``make test`` runs the core suite with it too)."""

import os

from tests.settings import *  # noqa: F403

DATABASES = {
    'default': {
        'ENGINE': 'django.db.backends.postgresql',
        'NAME': os.environ.get('CQRS_TEST_PG_NAME', 'cqrs_tests'),
        'USER': os.environ.get('CQRS_TEST_PG_USER', 'cqrs'),
        'PASSWORD': os.environ.get('CQRS_TEST_PG_PASSWORD', 'cqrs'),
        'HOST': os.environ.get('CQRS_TEST_PG_HOST', '127.0.0.1'),
        'PORT': os.environ.get('CQRS_TEST_PG_PORT', '5432'),
    },
}
DATABASES['other'] = {
    **DATABASES['default'],
    'NAME': os.environ.get('CQRS_TEST_PG_OTHER_NAME', 'cqrs_tests_other'),
}
