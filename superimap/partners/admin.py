from django.contrib import admin, messages
from django.db import models
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html

from superimap.admin_secrets import secret_form
from superimap.partners.models import DEFAULT_ROTATION_GRACE, Connection, ImapProvider, Partner

SHOWN_PREFIX = 6  # characters of a secret the dashboard shows after it was revealed once


def secret_prefix(value: str, skip: str = "") -> str:
    """ "abc123… - encrypted -": enough to tell keys apart, never enough to use one."""
    if not value:
        return ""
    return f"{value[: len(skip) + SHOWN_PREFIX]}… - encrypted -"


def _reveal(request, partner: Partner, what: str, value: str) -> None:
    # Shown once, on the next page only (the message is gone after that).
    messages.warning(
        request,
        format_html(
            "{} of {}: <code>{}</code> (shown once: copy it now; the dashboard keeps "
            "only its first characters visible)",
            what,
            partner.name,
            value,
        ),
    )


# Django 6's default already: a scheme-less URL typed in a form means https.
HTTPS_URLS = {models.URLField: {"assume_scheme": "https"}}


@admin.register(Partner)
class PartnerAdmin(admin.ModelAdmin):
    formfield_overrides = HTTPS_URLS
    list_display = ["name", "connections_link", "new_mail_webhook", "created_at"]
    search_fields = ["name"]
    readonly_fields = ["api_key_prefix", "webhook_secret_prefix", "created_at"]
    actions = ["rotate_api_key", "rotate_webhook_secret"]
    fieldsets = [
        (None, {"fields": ["name", "api_key_prefix", "webhook_secret_prefix", "created_at"]}),
        (
            "Webhooks",
            {
                "fields": [
                    "new_mail_webhook",
                    "user_connected_webhook",
                    "user_disconnected_webhook",
                    "user_error_webhook",
                    "user_recovered_webhook",
                ]
            },
        ),
        ("new_mail content", {"fields": ["include_rfc822", "include_parsed"]}),
        ("Connect callbacks", {"fields": ["success_url", "failure_url", "allowed_redirect_hosts"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(connection_count=Count("connections"))

    @admin.display(description="API key")
    def api_key_prefix(self, partner):
        return secret_prefix(partner.api_key)

    @admin.display(description="Webhook secret")
    def webhook_secret_prefix(self, partner):
        return secret_prefix(partner.webhook_secret, skip="whsec_")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            _reveal(request, obj, "API key", obj.api_key)
            _reveal(request, obj, "Webhook secret", obj.webhook_secret)
        # A URL set again after a 410 Gone: the endpoint is no longer shown as disabled.
        from superimap.delivery.models import EndpointHealth

        for health in EndpointHealth.objects.filter(
            partner=obj, state=EndpointHealth.State.DISABLED
        ):
            if obj.webhook_url(health.kind):
                health.state = EndpointHealth.State.HEALTHY
                health.consecutive_failures = 0
                health.save(update_fields=["state", "consecutive_failures", "updated_at"])

    # The same grace period as the API's rotate routes: deployments switch over meanwhile;
    # the previous key may use data routes only (403 key_in_grace on settings routes).
    @admin.action(description="Rotate the API key (the old one works 24 h more, data routes only)")
    def rotate_api_key(self, request, queryset):
        for partner in queryset:
            key = partner.rotate_api_key(DEFAULT_ROTATION_GRACE)
            _reveal(request, partner, "New API key", key)

    @admin.action(description="Rotate the webhook secret (webhooks signed by both for 24 h)")
    def rotate_webhook_secret(self, request, queryset):
        for partner in queryset:
            secret = partner.rotate_webhook_secret(DEFAULT_ROTATION_GRACE)
            _reveal(request, partner, "New webhook secret", secret)

    @admin.display(description="Connections", ordering="connection_count")
    def connections_link(self, partner):
        url = reverse("admin:partners_connection_changelist") + f"?partner__id__exact={partner.id}"
        return format_html('<a href="{}">Connections ({})</a>', url, partner.connection_count)


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    formfield_overrides = HTTPS_URLS
    form = secret_form(Connection, ("oauth_client_secret",))
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = ["__str__", "partner", "provider", "users_link", "security", "created_at"]
    list_filter = ["provider", "partner"]
    list_select_related = ["partner", "provider"]
    search_fields = ["partner__name", "provider__code"]
    readonly_fields = ["security"]

    @admin.display(description="Security")
    def security(self, connection):
        """Insecure IMAP settings (no TLS, no certificate verification) as a warning."""
        if connection.pk is None:
            return "-"
        warnings = connection.tls_warnings()
        if not warnings:
            return "OK"
        return format_html('<strong style="color: #ba2121">&#9888; {}</strong>', " ".join(warnings))

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
