"""Admin integration: the replication status page, and ``CQRSAdminMasterSyncMixin``.

Django's admin autodiscovery imports this module, which registers the status page on the
default admin site (``admin:dj_cqrs_status``): a project adds no URL for it. The page hangs on
``dj_cqrs.models.Status``, a model without a table, so that the admin index links to it for
the staff users allowed to see it (superusers, and whoever has ``dj_cqrs.view_status``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.dateformat import format as format_date

from dj_cqrs.admin_mixins import CQRSAdminMasterSyncMixin
from dj_cqrs.models import Status

__all__ = ['CQRSAdminMasterSyncMixin', 'CQRSStatusAdmin', 'LagChart', 'lag_chart']

UNKNOWN = 'unknown'
CHART_PERIOD = timedelta(hours=1)
# Series colours: distinguishable on the admin's light and dark themes.
CHART_COLORS = ('#2f80ed', '#eb5757', '#27ae60', '#f2994a', '#9b51e0', '#00a3a3')


@dataclass
class LagSeries:
    """One CQRS_ID's line: SVG ``points`` and the dots with their tooltip."""

    cqrs_id: str
    color: str
    points: str
    dots: list[tuple[float, float, str]]


@dataclass
class LagChart:
    """What the template needs to draw the lag chart as an inline SVG."""

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    max_lag: float
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    series: list[LagSeries]


def _ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 × 10ⁿ (at least 1) not below ``value``: the chart's top."""
    scale = 1.0
    while True:
        for step in (1, 2, 5):
            if scale * step >= value:
                return scale * step
        scale *= 10


def lag_chart(
    history: dict[str, list[tuple[datetime, float]]],
    now: datetime,
    period: timedelta = CHART_PERIOD,
    width: int = 640,
    height: int = 200,
) -> LagChart | None:
    """Lay out ``lag_history()`` samples (per CQRS_ID, (minute, max lag)) over ``period``.

    None when there is no sample. The x axis runs from ``now - period`` to ``now``; the y axis
    from 0 to a round value above the highest lag.
    """
    history = {cqrs_id: samples for cqrs_id, samples in history.items() if samples}
    if not history:
        return None
    left, top, right, bottom = 56, 10, 10, 24
    plot_width, plot_height = width - left - right, height - top - bottom
    start = now - period
    max_lag = _ceiling(max(lag for samples in history.values() for _, lag in samples))

    def x(moment: datetime) -> float:
        share = (moment - start) / period
        return round(left + min(max(share, 0.0), 1.0) * plot_width, 1)

    def y(lag: float) -> float:
        return round(top + plot_height - min(max(lag, 0.0), max_lag) / max_lag * plot_height, 1)

    series = []
    for index, (cqrs_id, samples) in enumerate(sorted(history.items())):
        dots = [
            (x(moment), y(lag), f'{cqrs_id} {_time(moment)}: {_seconds(lag)}')
            for moment, lag in samples
        ]
        series.append(
            LagSeries(
                cqrs_id=cqrs_id,
                color=CHART_COLORS[index % len(CHART_COLORS)],
                points=' '.join(f'{dot_x},{dot_y}' for dot_x, dot_y, _ in dots),
                dots=dots,
            )
        )
    minutes = int(period.total_seconds() // 60)
    return LagChart(
        width=width,
        height=height,
        left=left,
        top=top,
        plot_width=plot_width,
        plot_height=plot_height,
        max_lag=max_lag,
        y_ticks=[(y(max_lag * share), _seconds(max_lag * share)) for share in (0, 0.5, 1)],
        x_ticks=[
            (
                x(start + period * share),
                f'-{round(minutes * (1 - share))} min' if share < 1 else 'now',
            )
            for share in (0, 0.25, 0.5, 0.75, 1)
        ],
        series=series,
    )


def _shown(value: Any) -> str:
    return UNKNOWN if value is None else str(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    return f'{value:.1f} s' if value < 100 else f'{value:.0f} s'


def _time(value: datetime | None, never: str = UNKNOWN) -> str:
    if value is None:
        return never
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return format_date(value, 'Y-m-d H:i:s')


class CQRSStatusAdmin(admin.ModelAdmin):
    """The replication status page: the figures of ``manage.py cqrs_status``, read-only.

    Replica: the queue, its dead letters, per CQRS_ID the last applied message and the lag,
    and a chart of the lag over the last hour. Master: the outbox backlog per database. Both:
    whether the broker is reachable. What the transport cannot report is shown as "unknown".
    """

    template_name = 'admin/dj_cqrs/status.html'

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list:
        view = self.admin_site.admin_view(self.changelist_view)
        # The index links to the "changelist": both names lead to the status page.
        changelist = f'{self.opts.app_label}_{self.opts.model_name}_changelist'
        return [path('', view, name='dj_cqrs_status'), path('', view, name=changelist)]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> TemplateResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        from dj_cqrs import status as cqrs_status

        current = cqrs_status.collect()
        replica = current.side in ('replica', 'both')
        chart = lag_chart(cqrs_status.lag_history(), timezone.now()) if replica else None
        context = {
            **self.admin_site.each_context(request),
            'title': 'Replication status',
            'opts': self.opts,
            'status': current,
            'replica': replica,
            'master': current.side in ('master', 'both'),
            'broker_state': (
                'reachable'
                if current.broker_reachable
                else f'unreachable: {current.broker_error}'
                if current.broker_error
                else 'unreachable'
            ),
            'dead_letters': _shown(current.dead_letters),
            'queues': [
                (
                    queue.name,
                    _shown(queue.ready),
                    _shown(queue.unacknowledged),
                    _shown(queue.consumers),
                )
                for queue in current.queues
            ],
            'models': [
                (
                    model.cqrs_id,
                    _time(model.last_applied, never='never'),
                    _time(model.last_master_updated, never='never'),
                    _seconds(model.lag),
                )
                for model in current.models
            ],
            'outbox': [
                (
                    outbox.database,
                    str(outbox.rows),
                    '-' if outbox.oldest_age is None else _seconds(outbox.oldest_age),
                )
                for outbox in current.outbox
            ],
            'chart': chart,
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.template_name, context)


admin.site.register(Status, CQRSStatusAdmin)
