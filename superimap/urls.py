from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.generic import RedirectView

from superimap import healthz as liveness
from superimap.api.api import api
from superimap.mailboxes import oauth as mailbox_oauth
from superimap.mailboxes import views as mailbox_views
from superimap.metricsview import metrics_view


def healthz(request: HttpRequest) -> JsonResponse:
    """Every part's heartbeat; 503 when this box's engine or worker is dead (healthz.py)."""
    status, body = liveness.report()
    return JsonResponse(body, status=status)


admin.site.site_header = "SuperIMAP"
admin.site.site_title = "SuperIMAP"
admin.site.index_title = "Dashboard"
# The lists need the width (no horizontal scrolling at 1,400 px); Home is one click away.
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("connect/<str:token>", mailbox_views.connect, name="connect"),
    path("disconnect/<str:token>", mailbox_views.disconnect, name="disconnect"),
    path("oauth2/callback", mailbox_oauth.callback, name="oauth2-callback"),
    path("healthz", healthz),
    path("metrics", metrics_view),
]

handler404 = "superimap.api.errors.not_found_view"
handler500 = "superimap.api.errors.server_error_view"
