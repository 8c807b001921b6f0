from django.contrib import admin, messages
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Count
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from superimap.accounts import connections, partners
from superimap.accounts.checks import Problem
from superimap.admin_secrets import secret_form, show_problems
from superimap.api.errors import ApiError
from superimap.api.partner import send_test_webhook
from superimap.console import CONSOLE_CSS
from superimap.delivery.models import EndpointHealth
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


class PartnerForm(secret_form(Partner, ())):
    """The partner's fields, then the API's URL rules (accounts.partners)."""

    def _post_clean(self):
        super()._post_clean()  # the form's values are on the instance now
        problems = partners.partner_problems(self.instance)
        show_problems(self, [Problem(f, "invalid_field", m) for f, m in problems.items()])


class ConnectionForm(secret_form(Connection, ("oauth_client_secret",))):
    """The connection's fields, then every rule the API applies (accounts.connections)."""

    def clean_filters(self):
        # An emptied box means no filters (the column holds a list, never null).
        return self.cleaned_data.get("filters") or []

    def _post_clean(self):
        super()._post_clean()
        if not self.errors:
            instance = self.instance
            given = connections.set_fields(instance)
            show_problems(self, connections.connection_problems(instance, given))


@admin.register(Partner)
class PartnerAdmin(admin.ModelAdmin):
    class Media:
        css = CONSOLE_CSS

    form = PartnerForm
    formfield_overrides = HTTPS_URLS
    list_display = ["name", "connections_link", "new_mail_webhook", "created_at"]
    search_fields = ["name"]
    readonly_fields = ["api_key_prefix", "webhook_secret_prefix", "created_at", "endpoints"]
    actions = ["rotate_api_key", "rotate_webhook_secret"]
    fieldsets = [
        (None, {"fields": ["name", "api_key_prefix", "webhook_secret_prefix", "created_at"]}),
        ("Endpoint health", {"fields": ["endpoints"]}),
        (
            "Webhooks",
            {
                "fields": [
                    "new_mail_webhook",
                    "user_connected_webhook",
                    "user_disconnected_webhook",
                    "user_error_webhook",
                    "user_recovered_webhook",
                    "message_updated_webhook",
                    "message_deleted_webhook",
                ]
            },
        ),
        ("new_mail content", {"fields": ["include_rfc822", "include_parsed"]}),
        ("Connect callbacks", {"fields": ["success_url", "failure_url", "allowed_redirect_hosts"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(connection_count=Count("connections"))

    def get_urls(self):
        own = [
            path(
                "<int:partner_id>/test-webhook/",
                self.admin_site.admin_view(self.test_webhook_view),
                name="partners_partner_test_webhook",
            )
        ]
        return own + super().get_urls()

    def test_webhook_view(self, request, partner_id: int):
        """The "Send test webhook" buttons: the API's test-webhook code path (a signed ping
        through the worker's checked connector), the outcome shown as a message."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        partner = get_object_or_404(Partner, pk=partner_id)
        if not self.has_view_or_change_permission(request, partner):
            raise PermissionDenied
        kind = request.POST.get("test_webhook_kind", "")
        back = reverse("admin:partners_partner_change", args=[partner.pk])
        if kind not in Partner.WEBHOOK_KINDS:
            self.message_user(request, f"Unknown webhook kind {kind!r}.", messages.ERROR)
            return HttpResponseRedirect(back)
        try:
            result = send_test_webhook(partner, kind)
        except ApiError as exc:
            self.message_user(request, exc.message, messages.WARNING)
            return HttpResponseRedirect(back)
        if result["succeeded"]:
            self.message_user(
                request,
                f"Test {kind} webhook to {result['url']}: HTTP {result['status_code']} in "
                f"{result['latency_ms']} ms.",
                messages.SUCCESS,
            )
        else:
            reason = result["error"] or f"HTTP {result['status_code']}"
            self.message_user(
                request,
                f"Test {kind} webhook to {result['url']} failed: {reason} "
                f"({result['latency_ms']} ms).",
                messages.ERROR,
            )
        return HttpResponseRedirect(back)

    @admin.display(description="Endpoints")
    def endpoints(self, partner):
        """Each webhook URL's health (from the worker's attempts) and a test button."""
        if partner.pk is None:
            return "-"
        health = {row.kind: row for row in EndpointHealth.objects.filter(partner=partner)}
        action = reverse("admin:partners_partner_test_webhook", args=[partner.pk])
        rows = []
        for kind in Partner.WEBHOOK_KINDS:
            url = partner.webhook_url(kind)
            row = health.get(kind)
            if not url:
                state, detail = "no URL", ""
            elif row is None:
                state, detail = "nothing sent yet", ""
            else:
                state = row.get_state_display()
                if row.state == EndpointHealth.State.HEALTHY:
                    seen = row.last_success_at and timezone.localtime(row.last_success_at)
                    detail = f"last success {seen:%Y-%m-%d %H:%M:%S}" if seen else ""
                else:
                    detail = f"{row.consecutive_failures} failure(s) in a row: {row.last_error}"
            rows.append((kind, url or "-", state, detail, action, kind, "" if url else "disabled"))
        body = format_html_join(
            "",
            '<tr><td>{}</td><td class="si-url">{}</td><td>{}</td><td>{}</td><td>'
            '<button type="submit" class="button" formaction="{}" formmethod="post" '
            'name="test_webhook_kind" value="{}" {}>Send test webhook</button></td></tr>',
            rows,
        )
        return format_html(
            "<table><thead><tr><th>Kind</th><th>URL</th><th>State</th><th>Detail</th>"
            "<th></th></tr></thead><tbody>{}</tbody></table>",
            body,
        )

    @admin.display(description="API key")
    def api_key_prefix(self, partner):
        return secret_prefix(partner.api_key)

    @admin.display(description="Webhook secret")
    def webhook_secret_prefix(self, partner):
        return secret_prefix(partner.webhook_secret, skip="whsec_")

    def save_model(self, request, obj, form, change):
        partners.save_partner(obj)
        if not change:
            _reveal(request, obj, "API key", obj.api_key)
            _reveal(request, obj, "Webhook secret", obj.webhook_secret)

    # The same grace period as the API's rotate routes: deployments switch over meanwhile;
    # the previous key may use data routes only (403 key_in_grace on settings routes).
    @admin.action(description="Rotate the API key (the old one works 24 h more, data routes only)")
    def rotate_api_key(self, request, queryset):
        for partner in queryset:
            key = partners.rotate_api_key(partner, DEFAULT_ROTATION_GRACE)
            _reveal(request, partner, "New API key", key)

    @admin.action(description="Rotate the webhook secret (webhooks signed by both for 24 h)")
    def rotate_webhook_secret(self, request, queryset):
        for partner in queryset:
            secret = partners.rotate_webhook_secret(partner, DEFAULT_ROTATION_GRACE)
            _reveal(request, partner, "New webhook secret", secret)

    @admin.display(description="Connections", ordering="connection_count")
    def connections_link(self, partner):
        url = reverse("admin:partners_connection_changelist") + f"?partner__id__exact={partner.id}"
        return format_html('<a href="{}">Connections ({})</a>', url, partner.connection_count)


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    form = ConnectionForm
    formfield_overrides = HTTPS_URLS
    list_display = ["__str__", "partner", "provider", "users_link", "security", "created_at"]
    list_filter = ["provider", "partner"]
    list_select_related = ["partner", "provider"]
    search_fields = ["partner__name", "provider__code"]
    readonly_fields = ["security"]

    def save_model(self, request, obj, form, change):
        """A changed server, TLS or OAuth setting restarts its users' sessions."""
        connections.save_connection(obj)

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

    def save_model(self, request, obj, form, change):
        """A changed server setting restarts the sessions of every user of the provider."""
        connections.save_provider(obj)

    def has_add_permission(self, request):
        # Providers come with the install (migrations) and the API; adding one is not an
        # operator's everyday job, so the dashboard does not offer it.
        return False


# Groups are unused (operators are superusers); axes' lockout rows stay out of the way
# too (AXES_ENABLE_ADMIN = False in settings).
if admin.site.is_registered(Group):
    admin.site.unregister(Group)
