from django.apps import AppConfig


class CompatProjectConfig(AppConfig):
    name = 'tests.compat_project'
    label = 'compat_project'
    default_auto_field = 'django.db.models.AutoField'
