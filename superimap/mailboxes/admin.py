from django.contrib import admin, messages
from django.db.models import Exists, F, OuterRef, Value
from django.db.models.functions import Coalesce, NullIf
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from superimap import healthz
from superimap.admin_secrets import secret_form
from superimap.mailboxes.links import make_link
from superimap.mailboxes.models import MailboxUser, MailLog


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [
            ("active", "Active"),
            ("archived", "Archived"),
            ("tracer", "Tracer enabled"),
            ("auth_failed", "Authentication failed"),
            ("needs_attention", "Partner told: needs attention (user_error)"),
            ("not_connected", "Not connected"),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "active":
            return queryset.filter(archived=False)
        if value == "archived":
            return queryset.filter(archived=True)
        if value == "tracer":
            return queryset.filter(enable_tracer=True, archived=False)
        if value == "auth_failed":
            return queryset.filter(status=MailboxUser.Status.AUTH_FAILED, archived=False)
        if value == "needs_attention":
            return queryset.filter(error_notified_at__isnull=False, archived=False)
        if value == "not_connected":
            return queryset.filter(connected_at__isnull=True, archived=False)
        return queryset


class ImapHostFilter(admin.SimpleListFilter):
    """The IMAP server a mailbox connects to: the connection's own host, else its
    provider's (the overview's failing-host banner links here)."""

    title = "IMAP host"
    parameter_name = "imap_host"

    def lookups(self, request, model_admin):
        hosts = set(
            MailboxUser.objects.annotate(host=_host()).values_list("host", flat=True).distinct()
        )
        return [(host, host) for host in sorted(h for h in hosts if h)]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.annotate(host=_host()).filter(host=self.value())
        return queryset


def _host():
    return Coalesce(
        NullIf(F("connection__imap_host"), Value("")), F("connection__provider__imap_host")
    )


@admin.register(MailboxUser)
class MailboxUserAdmin(admin.ModelAdmin):
    form = secret_form(MailboxUser, ("password", "oauth_refresh_token"))
    list_display = [
        "tag",
        "email",
        "connection",
        "watch_status",
        "connected_at",
        "archived",
        "enable_tracer",
        "last_email_at",
        "mail_log_link",
    ]
    list_filter = [
        StateFilter,
        "status",
        ImapHostFilter,
        "connection__provider",
        "connection__partner",
    ]
    list_select_related = ["connection__partner", "connection__provider"]
    search_fields = ["tag", "email", "login_username"]
    raw_id_fields = ["connection"]
    show_full_result_count = False
    actions = [
        "archive_users",
        "restore_users",
        "enable_tracers",
        "disable_tracers",
        "sweep_inboxes",
    ]
    readonly_fields = [
        "connect_link",
        "disconnect_link",
        "watch_status",
        "status",
        "last_error",
        "status_changed_at",
        "consecutive_failures",
        "failing_since",
        "error_notified_at",
        "uid_validity",
        "last_uid",
        "checkpoint_folder",
        "other_folders",
        "last_internal_date",
        "last_email_at",
        "sweep_requested_at",
        "owner_node",
        "archived_at",
        "created_at",
    ]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "connection",
                    "tag",
                    "email",
                    "folders",
                    "enable_tracer",
                    "archived",
                    "archived_at",
                ]
            },
        ),
        (
            "Credentials (encrypted)",
            {"fields": ["login_username", "password", "oauth_refresh_token", "connected_at"]},
        ),
        ("Connect", {"fields": ["connect_link", "disconnect_link"]}),
        (
            "Engine",
            {
                "fields": [
                    "watch_status",
                    "status",
                    "last_error",
                    "status_changed_at",
                    "consecutive_failures",
                    "failing_since",
                    "error_notified_at",
                    "checkpoint_folder",
                    "uid_validity",
                    "last_uid",
                    "other_folders",
                    "last_internal_date",
                    "last_email_at",
                    "sweep_requested_at",
                    "owner_node",
                    "created_at",
                ]
            },
        ),
    ]

    def get_queryset(self, request):
        from superimap.engine.models import EngineNode

        live = EngineNode.objects.filter(
            node_id=OuterRef("owner_node"),
            last_seen__gte=timezone.now() - healthz.engine_dead_after(),
        )
        return super().get_queryset(request).annotate(owner_alive=Exists(live))

    @admin.display(description="Status", ordering="status")
    def watch_status(self, user):
        """The stored status, or "engine_down" when the engine node holding the mailbox is
        dead (healthz.shown_status)."""
        alive = getattr(user, "owner_alive", False)
        shown = healthz.shown_status(user, {user.owner_node} if alive else set())
        if shown == healthz.ENGINE_DOWN:
            return format_html('<strong style="color:#b00">{}</strong>', "engine down")
        return user.get_status_display()

    @admin.display(description="Other folders (UIDVALIDITY/last UID)")
    def other_folders(self, user):
        """The checkpoints of the folders watched besides the primary one (design.md 4.10)."""
        rows = user.folder_checkpoints.order_by("folder") if user.pk else []
        return ", ".join(str(row) for row in rows) or "-"

    @admin.display(description="Mail log")
    def mail_log_link(self, user):
        url = reverse("admin:mailboxes_maillog_changelist") + f"?user__id__exact={user.id}"
        return format_html('<a href="{}">Emails</a>', url)

    @admin.display(description="Connect link (30 min)")
    def connect_link(self, user):
        if not user.pk:
            return "-"
        return format_html('<a href="{0}">{0}</a>', make_link(user.id, "connect"))

    @admin.display(description="Disconnect link (30 min)")
    def disconnect_link(self, user):
        if not user.pk:
            return "-"
        return format_html('<a href="{0}">{0}</a>', make_link(user.id, "disconnect"))

    @admin.action(description="Archive selected users")
    def archive_users(self, request, queryset):
        count = 0
        for user in queryset.filter(archived=False):
            user.archive()
            count += 1
        self.message_user(request, f"Archived {count} user(s).", messages.SUCCESS)

    @admin.action(description="Restore selected users")
    def restore_users(self, request, queryset):
        restored, refused = 0, 0
        for user in queryset.filter(archived=True).select_related("connection"):
            if user.connection.users.filter(tag=user.tag, archived=False).exists():
                refused += 1
                continue
            user.restore()
            restored += 1
        self.message_user(request, f"Restored {restored} user(s).", messages.SUCCESS)
        if refused:
            self.message_user(
                request,
                f"{refused} user(s) not restored: an active user has the same tag.",
                messages.WARNING,
            )

    @admin.action(description="Enable tracer for selected users")
    def enable_tracers(self, request, queryset):
        count = queryset.update(enable_tracer=True)
        self.message_user(request, f"Tracer enabled for {count} user(s).", messages.SUCCESS)

    @admin.action(description="Disable tracer for selected users")
    def disable_tracers(self, request, queryset):
        count = queryset.update(enable_tracer=False)
        self.message_user(request, f"Tracer disabled for {count} user(s).", messages.SUCCESS)

    @admin.action(description="Sweep inbox (send webhooks for all mail)")
    def sweep_inboxes(self, request, queryset):
        count, skipped = 0, 0
        for user in queryset.select_related("connection"):
            if not user.watchable:
                skipped += 1
                continue
            user.request_sweep()
            count += 1
        self.message_user(request, f"Sweep requested for {count} user(s).", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"{skipped} user(s) skipped: archived or not connected.",
                messages.WARNING,
            )


class MailStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("delivered", "Delivered (new_mail)"), ("skipped", "Skipped")]

    def queryset(self, request, queryset):
        if self.value() == "delivered":
            return queryset.filter(skipped_reason="")
        if self.value() == "skipped":
            return queryset.exclude(skipped_reason="")
        return queryset


class SkipReasonFilter(admin.SimpleListFilter):
    title = "skip reason"
    parameter_name = "reason"

    def lookups(self, request, model_admin):
        return MailLog.Reason.choices

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(skipped_reason=self.value())
        return queryset


@admin.register(MailLog)
class MailLogAdmin(admin.ModelAdmin):
    list_display = [
        "message_id",
        "subject",
        "user",
        "uid",
        "uid_validity",
        "size",
        "internal_date",
        "status",
        "skipped_reason",
        "created_at",
    ]
    list_filter = [MailStatusFilter, SkipReasonFilter]
    list_select_related = ["user"]
    raw_id_fields = ["user"]
    search_fields = ["message_id", "sha1", "subject", "user__tag"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
