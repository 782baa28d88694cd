"""A project written against django-cqrs's documented API, run by tests/test_compat_project.py."""
