"""Mailbox users (the spec's "users") and the log of every email seen."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from superimap.changes import TrackedFields
from superimap.partners.folders import validate_folders
from superimap.partners.models import Connection
from superimap.platform.fields import EncryptedTextField


class MailboxUser(TrackedFields, models.Model):
    # What the IMAP session logs in with: changing one restarts the session (accounts/users.py).
    TRACKED = ("email", "login_username", "password", "oauth_refresh_token", "folders")
    CREDENTIALS = ("email", "login_username", "password", "oauth_refresh_token")

    class Status(models.TextChoices):
        NEW = "new", "Not started"
        CONNECTING = "connecting", "Connecting"
        IDLE = "idle", "Idle"
        POLLING = "polling", "Polling"
        SYNCING = "syncing", "Catching up"
        BACKING_OFF = "backing_off", "Backing off"
        AUTH_FAILED = "auth_failed", "Authentication failed"
        TLS_FAILED = "tls_failed", "TLS certificate check failed"
        STOPPED = "stopped", "Stopped"
        PAUSED = "paused", "Paused"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="users")
    tag = models.CharField(max_length=255)
    email = models.CharField(max_length=320, blank=True)
    login_username = models.CharField(max_length=320, blank=True)
    password = EncryptedTextField()
    oauth_refresh_token = EncryptedTextField()
    connected_at = models.DateTimeField(null=True, blank=True)
    archived = models.BooleanField(default=False)
    archived_at = models.DateTimeField(null=True, blank=True)
    enable_tracer = models.BooleanField(default=False)
    # Folders to watch (names or special-use flags, engine/folders.py); empty: the
    # connection's, else the one folder of design.md 4.5.
    folders = models.JSONField(default=list, blank=True, validators=[validate_folders])
    # Filters before the webhook (sync/filters.py); None: the connection's. A list, even
    # empty, wins over the connection's (empty: everything is delivered).
    filters = models.JSONField(
        null=True,
        blank=True,
        default=None,
        help_text='A JSON list of filters, e.g. [{"name": "shop", "from": ["@shop.example"], '
        '"has_attachments": true}]: only mail one of them selects is delivered. Empty: the '
        "connection's filters; [] delivers everything (README, Filters).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Checkpoint of the primary folder (the one watched by IDLE): what the engine has
    # persisted so far. Other folders have a FolderCheckpoint each.
    uid_validity = models.BigIntegerField(null=True, blank=True)
    last_uid = models.BigIntegerField(null=True, blank=True)
    # The folder the checkpoint belongs to (the engine picks it: engine/folders.py).
    checkpoint_folder = models.CharField(max_length=1000, default="INBOX")
    last_internal_date = models.DateTimeField(null=True, blank=True)
    last_email_at = models.DateTimeField(null=True, blank=True)
    # When the first baseline was taken: mail with an INTERNALDATE before it predates the
    # user and is never new, also after a UIDVALIDITY change (docs/design.md 4.3).
    baseline_at = models.DateTimeField(null=True, blank=True)
    # A chosen backfill window (design.md 4.12): the existing mail of the primary folder
    # since ``backfill_since`` (None: all of it, a sweep) goes out as new_mail with
    # "backfill": true, oldest first, paced. A request sets requested_at (and clears the
    # rest); the engine sets the window (its UID space, last UID, total) when it starts,
    # moves the position and the done count in each batch's transaction (a restart
    # continues after the position) and sets finished_at at the end.
    backfill_requested_at = models.DateTimeField(null=True, blank=True)
    backfill_since = models.DateTimeField(null=True, blank=True)
    backfill_uid_validity = models.BigIntegerField(null=True, blank=True)
    backfill_until_uid = models.BigIntegerField(null=True, blank=True)
    backfill_position = models.BigIntegerField(null=True, blank=True)
    backfill_total = models.PositiveIntegerField(default=0)
    backfill_done = models.PositiveIntegerField(default=0)
    backfill_finished_at = models.DateTimeField(null=True, blank=True)
    # Set while an operator has paused the mailbox: no engine session holds it (engine/
    # leases.py watchable()); resume() clears it and the next session catches up from the
    # checkpoint, so no mail is lost.
    paused_at = models.DateTimeField(null=True, blank=True)

    # Engine status, for the API and the dashboard.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    last_error = models.CharField(max_length=500, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # Since when the mailbox has been failing (cleared when it is watched again), and when
    # the partner was sent user_error for it (cleared with user_recovered): kept here, not in
    # a session, so each transition is told once across restarts and engine nodes.
    failing_since = models.DateTimeField(null=True, blank=True)
    error_notified_at = models.DateTimeField(null=True, blank=True)

    # Changes whenever the IMAP session must restart (docs/design.md 4.8): a tracked
    # field, the connection's server settings, a requested backfill. The engine compares it,
    # not updated_at, so a no-op PUT does not cost a login.
    session_version = models.CharField(max_length=32, blank=True, default="", editable=False)

    # user_connected is owed (design.md 4.9): a random token set with new credentials (API,
    # hosted form, OAuth), cleared by the engine's first successful login with them in the
    # transaction that enqueues user_connected. Kept here, not in a session, so it is sent
    # once per credential change across restarts and nodes; a newer token (credentials
    # changed again meanwhile) is not cleared by a login with the older credentials.
    connect_pending = models.CharField(max_length=32, blank=True, default="", editable=False)

    # Which engine node watches this mailbox: valid while that node's heartbeat row lives
    # (a node lease, design.md section 8).
    owner_node = models.CharField(max_length=100, blank=True)

    class Meta:
        db_table = "mailboxes_mailboxuser"
        ordering = ["connection_id", "tag", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "tag"],
                condition=Q(archived=False),
                name="unique_active_tag_per_connection",
            )
        ]
        indexes = [
            models.Index(fields=["archived", "connected_at"]),
            # A node's refresh: its rows changed since the last one, and the unowned ones.
            models.Index(fields=["owner_node", "updated_at"], name="mailbox_owner_changed"),
            # Did any mailbox change since the last refresh (rendezvous between nodes)?
            models.Index(fields=["updated_at"], name="mailbox_changed"),
        ]

    def __str__(self) -> str:
        return self.tag

    def credentials_changed(self) -> bool:
        """True if a credential field differs from its loaded value (always, for a new row)."""
        tracked = getattr(self, "_tracked", None)
        if tracked is None or self.pk is None:
            return True
        return any(
            self.__dict__.get(name, tracked[name]) != tracked[name]
            for name in self.CREDENTIALS
            if name in tracked
        )

    def backfill_progress(self) -> dict | None:
        """The backfill as the API and the dashboard show it; None if none was asked for.
        state: "pending" (asked, not started), "running", "done"."""
        if self.backfill_requested_at is None:
            return None
        if self.backfill_finished_at is not None:
            state = "done"
        elif self.backfill_until_uid is None:
            state = "pending"
        else:
            state = "running"
        return {
            "state": state,
            "since": self.backfill_since,
            "requested_at": self.backfill_requested_at,
            "finished_at": self.backfill_finished_at,
            "done": self.backfill_done,
            "total": self.backfill_total,
        }

    @property
    def has_credentials(self) -> bool:
        return bool(self.password or self.oauth_refresh_token)

    @property
    def watchable(self) -> bool:
        return not self.archived and self.connected_at is not None and self.has_credentials

    def archive(self) -> None:
        """No longer watched: the row's own change, nothing else (the delivery worker archives
        on a 403, below superimap/accounts; accounts.users.archive_user for everyone else)."""
        self.archived = True
        self.archived_at = timezone.now()
        self.status = self.Status.STOPPED  # the engine writes no status for it any more
        self.save(update_fields=["archived", "archived_at", "status", "updated_at"])


class MailLog(models.Model):
    """One row per message the engine saw at a (uid_validity, uid): delivered as new_mail
    (``skipped_reason`` empty) or skipped with a reason code. Also the dedup index."""

    class Reason(models.TextChoices):
        EXPUNGED = "expunged", "Expunged before it could be fetched"
        DUPLICATE = "duplicate", "Same message as one already delivered"
        BEFORE_BASELINE = "before_baseline", "Older than the user's baseline"
        TRACER = "tracer", "Tracer email"
        UNFETCHABLE = "unfetchable", "The server refused to return it"
        FILTERED = "filtered", "No filter of the user or connection selected it"

    user = models.ForeignKey(MailboxUser, on_delete=models.CASCADE, related_name="mail_logs")
    message_id = models.CharField(max_length=998, blank=True)
    sha1 = models.CharField(max_length=40, blank=True)
    # Dedup key: SHA-1 of Message-ID, size and Date header (engine/store.py identity_of).
    identity = models.CharField(max_length=40, blank=True)
    uid = models.BigIntegerField()
    uid_validity = models.BigIntegerField()
    folder = models.CharField(max_length=255, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    internal_date = models.DateTimeField(null=True, blank=True)
    size = models.PositiveIntegerField(default=0)
    # Empty: delivered as new_mail. Otherwise a Reason code (older rows: free text).
    skipped_reason = models.CharField(max_length=100, blank=True)
    # Filters: the filter that selected it, or the filters a filtered one matched none of.
    detail = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "mailboxes_maillog"
        ordering = ["-id"]
        constraints = [
            # Folders created in the same second share a UIDVALIDITY on Dovecot: a UID is
            # one message per folder only.
            models.UniqueConstraint(
                fields=["user", "folder", "uid_validity", "uid"], name="maillog_one_row_per_uid"
            ),
        ]
        indexes = [
            models.Index(fields=["user", "sha1"]),
            models.Index(fields=["user", "identity"], name="maillog_user_identity"),
        ]

    def __str__(self) -> str:
        return self.message_id or f"uid {self.uid}"

    @property
    def status(self) -> str:
        return "skipped" if self.skipped_reason else "delivered"


class FolderCheckpoint(models.Model):
    """What the engine has persisted so far in a folder other than the user's primary one
    (whose checkpoint is MailboxUser.uid_validity/last_uid/checkpoint_folder)."""

    user = models.ForeignKey(
        MailboxUser, on_delete=models.CASCADE, related_name="folder_checkpoints"
    )
    folder = models.CharField(max_length=1000)
    uid_validity = models.BigIntegerField()
    last_uid = models.BigIntegerField()
    last_internal_date = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "mailboxes_foldercheckpoint"
        constraints = [
            models.UniqueConstraint(fields=["user", "folder"], name="one_checkpoint_per_folder")
        ]

    def __str__(self) -> str:
        return f"{self.folder} {self.uid_validity}/{self.last_uid}"


class MessageState(models.Model):
    """The flags of a delivered message as last seen, for message_updated and
    message_deleted (design.md 4.14): written only while the partner has a change URL."""

    user = models.ForeignKey(MailboxUser, on_delete=models.CASCADE, related_name="+")
    folder = models.CharField(max_length=255)
    uid_validity = models.BigIntegerField()
    uid = models.BigIntegerField()
    message_id = models.CharField(max_length=998, blank=True)
    # The new_mail event that delivered it (None if that Delivery is gone).
    new_mail_event_id = models.UUIDField(null=True, blank=True)
    flags = models.TextField(blank=True)  # sync/changes.py canonical()
    labels = models.TextField(null=True, blank=True)  # Gmail X-GM-LABELS; None: none
    modseq = models.BigIntegerField(null=True, blank=True)
    changes = models.PositiveIntegerField(default=0)  # message_updated events so far
    gone = models.BooleanField(default=False)  # message_deleted was sent
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "mailboxes_messagestate"
        constraints = [
            models.UniqueConstraint(
                fields=["user", "folder", "uid_validity", "uid"], name="one_state_per_uid"
            )
        ]

    def __str__(self) -> str:
        return f"{self.folder} {self.uid_validity}/{self.uid}: {self.flags}"


class FolderChanges(models.Model):
    """Where change events of one folder stand: the modseq up to which changes were
    looked at (CONDSTORE/QRESYNC) and when the last bounded resync ran."""

    user = models.ForeignKey(MailboxUser, on_delete=models.CASCADE, related_name="+")
    folder = models.CharField(max_length=255)
    uid_validity = models.BigIntegerField()
    modseq = models.BigIntegerField(null=True, blank=True)
    resync_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "mailboxes_folderchanges"
        constraints = [
            models.UniqueConstraint(fields=["user", "folder"], name="one_changes_row_per_folder")
        ]

    def __str__(self) -> str:
        return f"{self.folder} {self.uid_validity} modseq {self.modseq}"


class UsedLink(models.Model):
    """The nonce of a connect/disconnect link that did its job (links are single-use)."""

    nonce = models.CharField(max_length=64, unique=True)
    used_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "mailboxes_usedlink"

    def __str__(self) -> str:
        return self.nonce
