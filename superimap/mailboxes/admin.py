from datetime import timedelta

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, F, OuterRef, Value
from django.db.models.functions import Coalesce, NullIf
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from superimap import healthz
from superimap.accounts import users as accounts_users
from superimap.accounts.errors import Refused
from superimap.admin_secrets import secret_form, show_problems
from superimap.console import CONSOLE_CSS
from superimap.engine.models import EngineNode
from superimap.engine.session import SessionSettings
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
            ("failing", "Failing (any reason)"),
            ("paused", "Paused"),
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
        if value == "failing":
            return queryset.filter(failing_since__isnull=False, archived=False)
        if value == "paused":
            return queryset.filter(paused_at__isnull=False, archived=False)
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


class MailboxUserForm(secret_form(MailboxUser, ("password", "oauth_refresh_token"))):
    def _post_clean(self):
        super()._post_clean()  # the form's values are on the instance now
        show_problems(self, accounts_users.edited_user_problems(self.instance))


@admin.register(MailboxUser)
class MailboxUserAdmin(admin.ModelAdmin):
    class Media:
        css = CONSOLE_CSS

    form = MailboxUserForm
    list_display = [
        "tag",
        "email",
        "partner",
        "watch_status",
        "error_text",
        "failing_since",
        "next_retry",
        "watched_folders",
        "owner_node",
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
        "reconnect_now",
        "pause_mailboxes",
        "resume_mailboxes",
        "archive_users",
        "restore_users",
        "enable_tracers",
        "disable_tracers",
        "sweep_inboxes",
    ]
    readonly_fields = [
        "operate",
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
        "backfill_progress",
        "paused_at",
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
                    "filters",
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
                    "operate",
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
                    "backfill_progress",
                    "paused_at",
                    "owner_node",
                    "created_at",
                ]
            },
        ),
    ]

    def get_queryset(self, request):
        live = EngineNode.objects.filter(
            node_id=OuterRef("owner_node"),
            last_seen__gte=timezone.now() - healthz.engine_dead_after(),
        )
        return super().get_queryset(request).annotate(owner_alive=Exists(live))

    def save_model(self, request, obj, form, change):
        """New credentials connect the user as through the API (user_connected owed, the
        session restarted); a changed folder restarts the session."""
        accounts_users.save_edited_user(obj)

    @admin.display(description="Status", ordering="status")
    def watch_status(self, user):
        """The stored status, or "engine_down" when the engine node holding the mailbox is
        dead (healthz.shown_status)."""
        alive = getattr(user, "owner_alive", False)
        shown = healthz.shown_status(user, {user.owner_node} if alive else set())
        if shown == healthz.ENGINE_DOWN:
            return format_html('<strong style="color:#b00">{}</strong>', "engine down")
        return user.get_status_display()

    OPERATIONS = {
        "reconnect": (accounts_users.reconnect_user, "Reconnect requested for"),
        "pause": (accounts_users.pause_user, "Paused"),
        "resume": (accounts_users.resume_user, "Resumed"),
    }

    def get_urls(self):
        own = [
            path(
                "<int:user_id>/operate/",
                self.admin_site.admin_view(self.operate_view),
                name="mailboxes_mailboxuser_operate",
            )
        ]
        return own + super().get_urls()

    def operate_view(self, request, user_id: int):
        """The change page's buttons: one mailbox, the same state changes as the list's
        actions and the API (superimap/accounts)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        user = get_object_or_404(MailboxUser.objects.select_related("connection"), pk=user_id)
        if not self.has_change_permission(request, user):
            raise PermissionDenied
        operation = self.OPERATIONS.get(request.POST.get("operate", ""))
        if operation is None:
            self.message_user(request, "Unknown operation.", messages.ERROR)
        else:
            self._each(request, MailboxUser.objects.filter(pk=user.pk), *operation)
        return HttpResponseRedirect(reverse("admin:mailboxes_mailboxuser_change", args=[user.pk]))

    @admin.display(description="Operate")
    def operate(self, user):
        """Buttons posting the page's form (and its CSRF token) to operate_view: no script."""
        if user.pk is None:
            return "-"
        action = reverse("admin:mailboxes_mailboxuser_operate", args=[user.pk])
        labels = [("reconnect", "Reconnect now"), ("pause", "Pause"), ("resume", "Resume")]
        return format_html_join(
            " ",
            '<button type="submit" class="button" formaction="{}" formmethod="post" '
            'name="operate" value="{}">{}</button>',
            [(action, value, label) for value, label in labels],
        )

    @admin.display(description="Partner", ordering="connection__partner__name")
    def partner(self, user):
        return user.connection.partner.name

    @admin.display(description="Last error")
    def error_text(self, user):
        """Why the mailbox fails, in the list (wrapped, cut at 160 characters)."""
        if not user.last_error:
            return "-"
        text = user.last_error
        short = text if len(text) <= 160 else text[:159] + "…"
        return format_html('<span class="si-error" title="{}">{}</span>', text, short)

    @admin.display(description="Next retry (about)")
    def next_retry(self, user):
        """When a failing session tries again: the back-off after its last failure
        (engine/session.py backoff_delay without its ±20 % jitter). Reconnect now skips it."""
        failing = {
            MailboxUser.Status.BACKING_OFF,
            MailboxUser.Status.AUTH_FAILED,
            MailboxUser.Status.TLS_FAILED,
        }
        if user.status not in failing or user.status_changed_at is None or user.paused_at:
            return "-"
        cfg = SessionSettings()
        failures = max(1, user.consecutive_failures)
        if user.status == MailboxUser.Status.BACKING_OFF:
            delay = min(cfg.max_backoff, float(failures**3 - 1))
        else:
            delay = min(cfg.max_auth_backoff, 300.0 * failures)
        return user.status_changed_at + timedelta(seconds=delay)

    @admin.display(description="Folders")
    def watched_folders(self, user):
        folders = user.folders or user.connection.folders or [user.checkpoint_folder]
        return ", ".join(folders)

    @admin.display(description="Other folders (UIDVALIDITY/last UID)")
    def other_folders(self, user):
        """The checkpoints of the folders watched besides the primary one (design.md 4.10)."""
        rows = user.folder_checkpoints.order_by("folder") if user.pk else []
        return ", ".join(str(row) for row in rows) or "-"

    @admin.display(description="Backfill")
    def backfill_progress(self, user):
        """The backfill window and how far it got (design.md 4.12)."""
        progress = user.backfill_progress() if user.pk else None
        if progress is None:
            return "-"
        since = progress["since"]
        window = f"since {since:%Y-%m-%d %H:%M} UTC" if since else "all mail"
        return f"{progress['state']}: {progress['done']} / {progress['total']} ({window})"

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

    def _each(self, request, queryset, act, verb: str) -> None:
        """Run a state change (the API's) on each selected mailbox; say what happened."""
        done, refused = 0, []
        for user in queryset.select_related("connection"):
            try:
                act(user)
                done += 1
            except Refused as exc:
                refused.append(f"{user.tag}: {exc.message}")
        self.message_user(request, f"{verb} {done} mailbox(es).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not done: " + " ".join(refused), messages.WARNING)

    @admin.action(description="Reconnect now / retry login now (skip the back-off)")
    def reconnect_now(self, request, queryset):
        self._each(request, queryset, accounts_users.reconnect_user, "Reconnect requested for")

    @admin.action(description="Pause selected mailboxes (no session until resumed)")
    def pause_mailboxes(self, request, queryset):
        self._each(request, queryset, accounts_users.pause_user, "Paused")

    @admin.action(description="Resume selected mailboxes (catch up from the checkpoint)")
    def resume_mailboxes(self, request, queryset):
        self._each(request, queryset, accounts_users.resume_user, "Resumed")

    @admin.action(description="Archive selected users")
    def archive_users(self, request, queryset):
        count = 0
        for user in queryset.filter(archived=False):
            accounts_users.archive_user(user)
            count += 1
        self.message_user(request, f"Archived {count} user(s).", messages.SUCCESS)

    @admin.action(description="Restore selected users")
    def restore_users(self, request, queryset):
        restored, refused = 0, 0
        for user in queryset.filter(archived=True).select_related("connection"):
            try:
                accounts_users.restore_user(user)
            except Refused:  # an active user has its tag
                refused += 1
                continue
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
            try:
                accounts_users.sweep_user(user)
            except Refused:  # archived or not connected
                skipped += 1
                continue
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
    class Media:
        css = CONSOLE_CSS

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
        "detail",
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

    def has_delete_permission(self, request, obj=None):
        return False  # read-only: retention purges (design.md 6.3)
