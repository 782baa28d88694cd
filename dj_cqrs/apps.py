"""Django app configuration of ``dj_cqrs``."""

from django.apps import AppConfig


class CQRSConfig(AppConfig):
    """Validates ``settings.CQRS`` (when the project has CQRS models) once the registry is ready."""

    name = 'dj_cqrs'
    verbose_name = 'CQRS'
    default_auto_field = 'django.db.models.AutoField'

    def ready(self) -> None:
        from dj_cqrs.conf import cqrs_settings

        cqrs_settings.validate()
