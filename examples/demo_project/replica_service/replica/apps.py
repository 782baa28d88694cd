from django.apps import AppConfig


class ReplicaConfig(AppConfig):
    name = 'replica'
    verbose_name = 'Replica (read-only copies)'
