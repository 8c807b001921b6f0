from django.contrib import admin
from django.db import models
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html

from superimap.admin_secrets import secret_form
from superimap.partners.models import Connection, ImapProvider, Partner

# Django 6's default already: a scheme-less URL typed in a form means https.
HTTPS_URLS = {models.URLField: {"assume_scheme": "https"}}


@admin.register(Partner)
class PartnerAdmin(admin.ModelAdmin):
    formfield_overrides = HTTPS_URLS
    list_display = ["name", "connections_link", "new_mail_webhook", "created_at"]
    search_fields = ["name"]
    readonly_fields = ["api_key", "webhook_secret", "created_at"]
    fieldsets = [
        (None, {"fields": ["name", "api_key", "webhook_secret", "created_at"]}),
        (
            "Webhooks",
            {"fields": ["new_mail_webhook", "user_connected_webhook", "user_disconnected_webhook"]},
        ),
        ("new_mail content", {"fields": ["include_rfc822", "include_parsed"]}),
        ("Connect callbacks", {"fields": ["success_url", "failure_url", "allowed_redirect_hosts"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(connection_count=Count("connections"))

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # A URL set again after a 410 Gone: the endpoint is no longer shown as disabled.
        from superimap.delivery.models import EndpointHealth

        for health in EndpointHealth.objects.filter(
            partner=obj, state=EndpointHealth.State.DISABLED
        ):
            if obj.webhook_url(health.kind):
                health.state = EndpointHealth.State.HEALTHY
                health.consecutive_failures = 0
                health.save(update_fields=["state", "consecutive_failures", "updated_at"])

    @admin.display(description="Connections", ordering="connection_count")
    def connections_link(self, partner):
        url = reverse("admin:partners_connection_changelist") + f"?partner__id__exact={partner.id}"
        return format_html('<a href="{}">Connections ({})</a>', url, partner.connection_count)


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    formfield_overrides = HTTPS_URLS
    form = secret_form(Connection, ("oauth_client_secret",))
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = ["__str__", "partner", "provider", "users_link", "created_at"]
    list_filter = ["provider", "partner"]
    list_select_related = ["partner", "provider"]
    search_fields = ["partner__name", "provider__code"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(user_count=Count("users"))

    @admin.display(description="Users", ordering="user_count")
    def users_link(self, connection):
        url = (
            reverse("admin:mailboxes_mailboxuser_changelist")
            + f"?connection__id__exact={connection.id}"
        )
        return format_html('<a href="{}">Users ({})</a>', url, connection.user_count)


@admin.register(ImapProvider)
class ImapProviderAdmin(admin.ModelAdmin):
    formfield_overrides = HTTPS_URLS
    list_display = [
        "code",
        "title",
        "auth_kind",
        "imap_host",
        "imap_port",
        "imap_tls",
        "loopback_only",
    ]
    list_filter = ["auth_kind", "loopback_only"]
    search_fields = ["code", "title"]
