"""Dashboard pages in DASHBOARD_TIME_ZONE (settings); the API stays in UTC."""

from __future__ import annotations

import zoneinfo

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.decorators import sync_and_async_middleware


def dashboard_zone() -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(settings.DASHBOARD_TIME_ZONE)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"DASHBOARD_TIME_ZONE={settings.DASHBOARD_TIME_ZONE!r} is not a time zone name "
            "(e.g. UTC, Europe/Paris)."
        ) from exc


@sync_and_async_middleware
def DashboardTimeZoneMiddleware(get_response):  # noqa: N802 - Django's middleware naming
    zone = dashboard_zone()  # a wrong name stops the start, not a page later

    if iscoroutinefunction(get_response):

        async def middleware(request):
            if not request.path.startswith("/admin/"):
                return await get_response(request)
            with timezone.override(zone):
                return await get_response(request)

    else:

        def middleware(request):
            if not request.path.startswith("/admin/"):
                return get_response(request)
            with timezone.override(zone):
                return get_response(request)

    return middleware
