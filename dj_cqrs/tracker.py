"""``CQRSTracker``: the field tracker behind ``CQRS_TRACKED_FIELDS``."""

from __future__ import annotations

from typing import Any

from model_utils import FieldTracker
from model_utils.tracker import FieldInstanceTracker

from dj_cqrs.constants import ALL_BASIC_FIELDS, FIELDS_TRACKER_FIELD_NAME
from dj_cqrs.utils import get_json_valid_value

_relation_names: dict[type, dict[str, str]] = {}


def _names_of_relations(model_cls: type) -> dict[str, str]:
    names = _relation_names.get(model_cls)
    if names is None:
        names = {f.attname: f.name for f in model_cls._meta.concrete_fields if f.is_relation}
        _relation_names[model_cls] = names
    return names


class CQRSFieldInstanceTracker(FieldInstanceTracker):
    """Tracker of one instance; values are kept as they are sent (dates and UUIDs as text).

    Foreign keys are tracked by attname (``parent_id``): ``changed()`` names them by field
    name (``parent``), ``changed_initial()`` and ``current()`` by attname, as django-cqrs does.
    """

    def get_field_value(self, field: str) -> Any:
        return get_json_valid_value(super().get_field_value(field))

    def changed(self) -> dict[str, Any]:
        """Previous values of the tracked fields changed since the last save or load."""
        names = _names_of_relations(type(self.instance))
        return {names.get(field, field): value for field, value in super().changed().items()}

    def changed_initial(self) -> dict[str, Any]:
        """For a new instance: ``None`` for every tracked field that has a value."""
        return {field: None for field in self.fields if self.get_field_value(field) is not None}


class CQRSTracker(FieldTracker):
    """``FieldTracker`` installed as ``cqrs_field_tracker`` on models with tracked fields."""

    tracker_class = CQRSFieldInstanceTracker

    @classmethod
    def add_to_model(cls, model_cls: type) -> CQRSTracker | None:
        """Track ``model_cls.CQRS_TRACKED_FIELDS`` (``'__all__'``: every concrete field).

        Returns the tracker, or None when the class already has its own one.
        """
        if FIELDS_TRACKER_FIELD_NAME in model_cls.__dict__:
            return None
        declared = model_cls.CQRS_TRACKED_FIELDS
        fields = [
            field.attname if field.is_relation else field.name
            for field in model_cls._meta.concrete_fields
            if declared == ALL_BASIC_FIELDS or field.name in declared
        ]
        tracker = cls(fields=fields)
        tracker.name = FIELDS_TRACKER_FIELD_NAME
        tracker.attname = f'_{FIELDS_TRACKER_FIELD_NAME}'
        tracker.finalize_class(model_cls)
        return tracker
