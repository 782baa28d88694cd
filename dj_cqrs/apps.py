"""Django app configuration of ``dj_cqrs``."""

from django.apps import AppConfig


class CQRSConfig(AppConfig):
    """Validates ``settings.CQRS`` (when the project has CQRS models) once the registry is ready."""

    name = 'dj_cqrs'
    verbose_name = 'CQRS'
    default_auto_field = 'django.db.models.AutoField'

    def ready(self) -> None:
        """Run ``validate_settings()``."""
        validate_settings()
        from dj_cqrs.conf import cqrs_settings

        if cqrs_settings.metrics:
            from dj_cqrs import metrics

            metrics.enable()


def validate_settings() -> None:
    """Validate ``settings.CQRS`` for the CQRS models registered so far (what ``ready()`` runs).

    The settings module knows nothing of models or transports: this entry point, the top of
    the package, hands it the registries' verdict and the transport base class.
    """
    from dj_cqrs.conf import cqrs_settings
    from dj_cqrs.registries import MasterRegistry, ReplicaRegistry
    from dj_cqrs.transport.base import BaseTransport

    cqrs_settings.validate(
        has_masters=bool(MasterRegistry.models),
        has_replicas=bool(ReplicaRegistry.models),
        transport_base=BaseTransport,
    )
