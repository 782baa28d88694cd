"""Settings of the test project: a master app and a replica app in one process."""

SECRET_KEY = 'tests-only-not-secret'
DEBUG = False
USE_TZ = True
TIME_ZONE = 'UTC'
ALLOWED_HOSTS = ['*']
DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'

INSTALLED_APPS = [
    'django.contrib.admin',
    'django.contrib.auth',
    'django.contrib.contenttypes',
    'django.contrib.sessions',
    'django.contrib.messages',
    'mptt',
    'dj_cqrs',
    'tests.dj_master',
    'tests.dj_replica',
    'tests.compat_project',
]

MIDDLEWARE = [
    'django.contrib.sessions.middleware.SessionMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.middleware.csrf.CsrfViewMiddleware',
    'django.contrib.auth.middleware.AuthenticationMiddleware',
    'django.contrib.messages.middleware.MessageMiddleware',
]

ROOT_URLCONF = 'tests.urls'

TEMPLATES = [
    {
        'BACKEND': 'django.template.backends.django.DjangoTemplates',
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

DATABASES = {
    'default': {
        'ENGINE': 'django.db.backends.sqlite3',
        'NAME': ':memory:',
    },
    # A second database for the tests of changes saved with ``using='other'``.
    'other': {
        'ENGINE': 'django.db.backends.sqlite3',
        'NAME': ':memory:',
    },
}

CQRS = {
    'transport': 'dj_cqrs.transport.loopback.LoopbackTransport',
    'queue': 'replica',
    'master': {
        'CQRS_AUTO_UPDATE_FIELDS': False,
        'CQRS_MESSAGE_TTL': 3600,
    },
    'replica': {
        'CQRS_MAX_RETRIES': 5,
        'CQRS_RETRY_DELAY': 1,
    },
}

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'loggers': {'django-cqrs': {'level': 'DEBUG', 'propagate': True}},
}
