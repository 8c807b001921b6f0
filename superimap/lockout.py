"""The dashboard's lockout page (django-axes: AXES_FAILURE_LIMIT wrong passwords lock a
username from one address for AXES_COOLOFF_TIME): for how long, and how an operator with
shell access lifts it now."""

from __future__ import annotations

import shlex

from axes.helpers import get_client_username
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.timesince import timesince


def lockout_response(request: HttpRequest, original_response=None, credentials=None):
    """AXES_LOCKOUT_CALLABLE: a 429 page that says when the lock ends and how to end it."""
    username = get_client_username(request, credentials) or ""
    now = timezone.now()
    duration = timesince(now - settings.AXES_COOLOFF_TIME, now).replace("\xa0", " ")
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": "Too many failed logins",
        "username": username,
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "duration": duration,
        "unlock_command": f"superimap manage axes_reset_username {shlex.quote(username or 'NAME')}",
    }
    response: HttpResponse = render(request, "admin/lockout.html", context, status=429)
    response["Retry-After"] = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    return response
