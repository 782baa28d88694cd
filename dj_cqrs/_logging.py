"""The package logger: every module logs on ``django-cqrs``."""

import logging

logger = logging.getLogger('django-cqrs')
