"""django-cqrs: keep read-only copies of Django models in sync between services."""

__version__ = '0.1.0'
