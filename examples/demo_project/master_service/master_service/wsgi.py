"""WSGI entry point of the demo master service."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'master_service.settings')

application = get_wsgi_application()
