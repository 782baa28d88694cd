from django.apps import AppConfig


class ReplicaConfig(AppConfig):
    name = 'tests.dj_replica'
    label = 'dj_replica'
