from django.apps import AppConfig


class MasterConfig(AppConfig):
    name = 'tests.dj_master'
    label = 'dj_master'
