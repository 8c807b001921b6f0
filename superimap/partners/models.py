"""Partners (applications using SuperIMAP), IMAP providers and partner connections."""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from superimap.changes import TrackedFields
from superimap.partners.folders import validate_folders
from superimap.platform.fields import EncryptedTextField
from superimap.platform.validation import validate_host_name

OAUTH_ENDPOINTS = ("authorize", "token", "revoke", "userinfo")
# How long the previous API key or webhook secret keeps working after a rotation, by
# default (API rotate routes, dashboard actions: accounts/partners.py).
DEFAULT_ROTATION_GRACE = timedelta(hours=24)


def new_api_key() -> str:
    return secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _hostname(url: str) -> str:
    """The URL's host name in lower case; "" when it has none or cannot be parsed."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class ImapProvider(TrackedFields, models.Model):
    """How to reach one kind of mailbox. Seeded by a data migration."""

    # What its users' IMAP sessions use: changing one restarts them (accounts/connections.py).
    TRACKED = ("imap_host", "imap_port", "imap_tls", "folder", "idle_refresh_seconds")

    class AuthKind(models.TextChoices):
        OAUTH2 = "oauth2", "OAuth 2.0"
        PASSWORD = "password", "Password"

    class TlsMode(models.TextChoices):
        IMPLICIT = "implicit", "Implicit TLS"
        STARTTLS = "starttls", "STARTTLS"
        NONE = "none", "None (loopback tests only)"

    code = models.CharField(max_length=64, unique=True)
    title = models.CharField(max_length=200)
    auth_kind = models.CharField(max_length=16, choices=AuthKind.choices)
    # Empty host: given per connection (PLAIN and LOOPBACK providers).
    imap_host = models.CharField(max_length=255, blank=True, validators=[validate_host_name])
    imap_port = models.PositiveIntegerField(default=993)
    imap_tls = models.CharField(max_length=16, choices=TlsMode.choices, default=TlsMode.IMPLICIT)
    smtp_host = models.CharField(max_length=255, blank=True, validators=[validate_host_name])
    smtp_port = models.PositiveIntegerField(default=587)
    oauth_authorize_url = models.URLField(blank=True)
    oauth_token_url = models.URLField(blank=True)
    oauth_revoke_url = models.URLField(blank=True)
    oauth_userinfo_url = models.URLField(blank=True)
    oauth_scopes = models.CharField(max_length=500, blank=True)
    folder = models.CharField(max_length=255, default="INBOX")
    # DONE + IDLE this often, for servers that only look for new mail when IDLE starts
    # (stock Cyrus without idled, Courier without enhanced IDLE); 0: only every
    # IDLE_REISSUE_SECONDS; None: automatic, by the server's greeting (engine/session.py).
    idle_refresh_seconds = models.PositiveIntegerField(null=True, blank=True)
    # Loopback providers may skip TLS verification; usable only with ALLOW_LOOPBACK_IMAP.
    loopback_only = models.BooleanField(default=False)

    class Meta:
        db_table = "partners_imapprovider"
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code

    @property
    def host_per_connection(self) -> bool:
        return not self.imap_host

    @property
    def brand(self) -> str:
        """The provider as its users know it ("Gmail"): the title without the operator's
        notes in parentheses ("(OAuth 2.0)", "(app password)")."""
        return self.title.split(" (")[0]

    def is_usable(self) -> bool:
        return not self.loopback_only or settings.ALLOW_LOOPBACK_IMAP


NAME_TAKEN = "A partner with this name exists already (names are compared ignoring case)."
URL_FIELDS = (
    "new_mail_webhook",
    "user_connected_webhook",
    "user_disconnected_webhook",
    "user_error_webhook",
    "user_recovered_webhook",
    "message_updated_webhook",
    "message_deleted_webhook",
    "success_url",
    "failure_url",
)


class Partner(models.Model):
    """An application (or one environment of it) that receives webhooks."""

    name = models.CharField(max_length=200)
    api_key = EncryptedTextField(help_text="Sent by the partner as the x-api-key header.")
    api_key_hash = models.CharField(max_length=64, unique=True, editable=False)
    webhook_secret = EncryptedTextField(help_text="Standard Webhooks signing secret (whsec_...).")
    new_mail_webhook = models.URLField("new mail webhook", max_length=1000, blank=True)
    user_connected_webhook = models.URLField("user connected webhook", max_length=1000, blank=True)
    user_disconnected_webhook = models.URLField(
        "user disconnected webhook", max_length=1000, blank=True
    )
    user_error_webhook = models.URLField(
        "user error webhook",
        max_length=1000,
        blank=True,
        help_text="Told when a mailbox needs attention (auth_failed, tls_failed, failing 15 min).",
    )
    user_recovered_webhook = models.URLField(
        "user recovered webhook",
        max_length=1000,
        blank=True,
        help_text="Told when a mailbox that was reported with user_error is watched again.",
    )
    # Change events (design.md 4.14): opt-in; with neither set the engine does no extra work.
    message_updated_webhook = models.URLField(
        "message updated webhook",
        max_length=1000,
        blank=True,
        help_text="Told when the flags (or Gmail labels) of a delivered message change.",
    )
    message_deleted_webhook = models.URLField(
        "message deleted webhook",
        max_length=1000,
        blank=True,
        help_text="Told when a delivered message leaves a watched folder (expunged, moved).",
    )
    # new_mail content options: the raw message (the original's behaviour) and/or bodies
    # and attachment metadata parsed by SuperIMAP (superimap.delivery.content).
    include_rfc822 = models.BooleanField(
        "include rfc822", default=True, help_text="new_mail carries the raw message."
    )
    include_parsed = models.BooleanField(
        default=False,
        help_text="new_mail carries parsed text and html bodies and attachment metadata.",
    )
    success_url = models.URLField(max_length=1000, blank=True, help_text="Default after connect.")
    failure_url = models.URLField(max_length=1000, blank=True, help_text="Default after a failure.")
    allowed_redirect_hosts = models.CharField(
        max_length=1000,
        blank=True,
        help_text="Comma-separated host names that success/failure callbacks may point to, "
        "besides the hosts of this partner's webhook and success/failure URLs.",
    )
    # Rotation through the API: the previous key / secret stays valid until *_until.
    previous_api_key_hash = models.CharField(max_length=64, blank=True, db_index=True)
    previous_api_key_until = models.DateTimeField(null=True, blank=True)
    previous_webhook_secret = EncryptedTextField()
    previous_webhook_secret_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "partners_partner"
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(
                Lower("name"),
                name="partner_name_unique_ignoring_case",
                violation_error_message=NAME_TAKEN,
            )
        ]

    # Set on the instance for_api_key() returns when the key it was given is the previous
    # one, in its rotation grace period: it may use data routes, not change settings.
    key_in_grace = False

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        # The row's own invariant, not a side effect: a partner always has a key and a
        # secret, and api_key_hash is the key's (for_api_key looks it up by the hash).
        if not self.api_key:
            self.api_key = new_api_key()
        if not self.webhook_secret:
            self.webhook_secret = new_webhook_secret()
        self.api_key_hash = hash_api_key(self.api_key)
        super().save(*args, **kwargs)

    @classmethod
    def for_api_key(cls, api_key: str) -> Partner | None:
        """The partner with this API key, or whose previous key it is, in its grace period."""
        if not api_key:
            return None
        hashed = hash_api_key(api_key)
        partner = cls.objects.filter(api_key_hash=hashed).first()
        if partner is None:
            partner = cls.objects.filter(
                previous_api_key_hash=hashed, previous_api_key_until__gt=timezone.now()
            ).first()
            if partner is not None:
                partner.key_in_grace = True
        return partner

    def name_taken(self) -> bool:
        """Another partner has this name, ignoring case (the unique constraint's rule)."""
        return (
            type(self).objects.filter(name__iexact=self.name.strip()).exclude(pk=self.pk).exists()
        )

    def signing_secrets(self) -> tuple[str, ...]:
        """The whsec_ secrets webhooks are signed with now: the current one first."""
        until = self.previous_webhook_secret_until
        if self.previous_webhook_secret and until and until > timezone.now():
            return (self.webhook_secret, self.previous_webhook_secret)
        return (self.webhook_secret,)

    WEBHOOK_KINDS = (
        "new_mail",
        "user_connected",
        "user_disconnected",
        "user_error",
        "user_recovered",
        "message_updated",
        "message_deleted",
    )
    CHANGE_KINDS = ("message_updated", "message_deleted")

    @property
    def tracks_changes(self) -> bool:
        return bool(self.message_updated_webhook or self.message_deleted_webhook)

    def webhook_url(self, kind: str) -> str:
        """The URL of one event kind (its field is ``<kind>_webhook``); "" when not set."""
        if kind not in self.WEBHOOK_KINDS:
            raise KeyError(kind)
        return getattr(self, f"{kind}_webhook")

    def redirect_hosts(self) -> set[str]:
        """Hosts callbacks may point to: allowed_redirect_hosts, plus by default the hosts of
        the partner's own success/failure URLs and webhook URLs (its own servers)."""
        hosts = {h.strip().lower() for h in self.allowed_redirect_hosts.split(",") if h.strip()}
        own = (self.success_url, self.failure_url, *map(self.webhook_url, self.WEBHOOK_KINDS))
        for url in own:
            if url:
                hosts.add(_hostname(url))
        hosts.discard("")
        return hosts

    def disable_webhook(self, kind: str) -> str:
        """Switch off the URL for `kind` (after a 410 Gone); returns the URL it had."""
        field = f"{kind}_webhook"
        url = getattr(self, field)
        type(self).objects.filter(id=self.id).update(**{field: ""})
        setattr(self, field, "")
        return url

    def redirect_allowed(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError:
            return False
        if parts.scheme not in {"http", "https"} or not hostname:
            return False
        return hostname.lower() in self.redirect_hosts()


class Connection(TrackedFields, models.Model):
    """A partner's use of one provider, with the partner's OAuth client or server settings."""

    # What its mailboxes' IMAP sessions use: changing one restarts them (accounts/connections.py).
    TRACKED = (
        "imap_host",
        "imap_port",
        "imap_tls",
        "oauth_client_id",
        "oauth_client_secret",
        "oauth_base_url",
        "imap_tls_ca",
        "imap_tls_verify",
        "imap_allow_plaintext",
        "idle_refresh_seconds",
        "folders",
    )

    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="connections")
    provider = models.ForeignKey(ImapProvider, on_delete=models.PROTECT, related_name="connections")
    oauth_client_id = models.CharField(max_length=500, blank=True)
    oauth_client_secret = EncryptedTextField()
    # Server settings for providers whose host is given per connection (PLAIN, LOOPBACK).
    imap_host = models.CharField(max_length=255, blank=True, validators=[validate_host_name])
    imap_port = models.PositiveIntegerField(null=True, blank=True)
    imap_tls = models.CharField(max_length=16, choices=ImapProvider.TlsMode.choices, blank=True)
    # Self-hosted servers (host-per-connection providers only): trust this PEM bundle
    # instead of the system CAs; or, explicitly, skip verification or TLS altogether.
    imap_tls_ca = models.TextField(
        "IMAP TLS CA bundle",
        blank=True,
        help_text="PEM certificates to trust for this server instead of the system CAs.",
    )
    imap_tls_verify = models.BooleanField(
        "verify the IMAP certificate",
        default=True,
        help_text="Off: any certificate is accepted (insecure; shown as a warning).",
    )
    imap_allow_plaintext = models.BooleanField(
        "allow IMAP without TLS",
        default=False,
        help_text='Needed for imap_tls "none": password and mail cross the network in clear.',
    )
    # Overrides the provider's idle_refresh_seconds when set (0 turns it off).
    idle_refresh_seconds = models.PositiveIntegerField(null=True, blank=True)
    # Folders its users' sessions watch (names or special-use flags like "\\Junk"; the
    # first is watched by IDLE); empty: the one folder of design.md 4.5. A user's own wins.
    folders = models.JSONField(default=list, blank=True, validators=[validate_folders])
    # Filters before the webhook for its users (sync/filters.py): only mail one of them
    # selects is delivered; empty: everything. A user's own (set) win.
    filters = models.JSONField(
        default=list,
        blank=True,
        help_text='A JSON list of filters, e.g. [{"name": "shop", "from": ["@shop.example"]}]: '
        "only mail one of them selects is delivered; [] delivers everything. A user's own win "
        "(README, Filters).",
    )
    # SMTP for tracer emails, likewise only for host-per-connection providers.
    smtp_host = models.CharField(max_length=255, blank=True, validators=[validate_host_name])
    smtp_port = models.PositiveIntegerField(null=True, blank=True)
    smtp_tls = models.CharField(max_length=16, choices=ImapProvider.TlsMode.choices, blank=True)
    # Loopback OAuth providers only: the local OAuth server ({base}/authorize, /token, ...).
    oauth_base_url = models.URLField(
        "OAuth base URL",
        max_length=500,
        blank=True,
        help_text="Loopback test providers only: authorize, token, revoke and userinfo under it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "partners_connection"
        ordering = ["partner_id", "provider__code"]
        constraints = [
            models.UniqueConstraint(
                fields=["partner", "provider"], name="one_connection_per_provider"
            )
        ]

    def __str__(self) -> str:
        return f"{self.partner} / {self.provider.code}"

    @property
    def code(self) -> str:
        return self.provider.code

    @property
    def inbox_name(self) -> str:
        """The user's inbox as the hosted pages name it to the mailbox's owner: by the
        provider's brand ("Gmail inbox"), or by the server for a host given per connection
        ("inbox on mail.example.com"); never the operator's notes in the provider's title."""
        if self.provider.host_per_connection:
            return f"inbox on {self.imap_host}"
        return f"{self.provider.brand} inbox"

    def oauth_url(self, endpoint: str) -> str:
        """The provider's OAuth endpoint ("authorize", "token", "revoke" or "userinfo")."""
        if endpoint not in OAUTH_ENDPOINTS:
            raise ValueError(endpoint)
        if self.oauth_base_url and self.provider.loopback_only:
            return f"{self.oauth_base_url.rstrip('/')}/{endpoint}"
        return getattr(self.provider, f"oauth_{endpoint}_url")

    def server(self) -> tuple[str, int, str]:
        """(host, port, tls mode) the engine connects to."""
        provider = self.provider
        if provider.host_per_connection:
            return (
                self.imap_host,
                self.imap_port or provider.imap_port,
                self.imap_tls or provider.imap_tls,
            )
        return provider.imap_host, provider.imap_port, provider.imap_tls

    @property
    def effective_idle_refresh(self) -> int | None:
        """Seconds between IDLE re-issues for this connection; 0: only every
        IDLE_REISSUE_SECONDS; None: automatic (by the server's greeting)."""
        if self.idle_refresh_seconds is not None:
            return self.idle_refresh_seconds
        return self.provider.idle_refresh_seconds

    def tls_options(self) -> tuple[str, bool]:
        """(CA bundle PEM, verify) for the IMAP server; fixed-host providers: ("", True)."""
        if not self.provider.host_per_connection:
            return "", True
        return self.imap_tls_ca, self.imap_tls_verify and not self.provider.loopback_only

    def tls_warnings(self) -> list[str]:
        """What the dashboard and the API show about an insecure IMAP connection."""
        if not self.provider.host_per_connection or self.provider.loopback_only:
            return []
        warnings = []
        if self.server()[2] == ImapProvider.TlsMode.NONE:
            warnings.append("IMAP without TLS: passwords and mail cross the network unencrypted.")
        elif not self.imap_tls_verify:
            warnings.append(
                "TLS certificate verification is off (imap_tls_verify: false): anyone on "
                "the network path can impersonate the server; prefer imap_tls_ca."
            )
        return warnings

    def smtp_server(self) -> tuple[str, int, str]:
        """(host, port, tls mode) tracer emails are sent through; host "" when unknown.

        Without an explicit TLS mode, port 465 means implicit TLS and any other STARTTLS.
        """
        provider = self.provider
        if provider.host_per_connection:
            host, port, tls = self.smtp_host, self.smtp_port or provider.smtp_port, self.smtp_tls
        else:
            host, port, tls = provider.smtp_host, provider.smtp_port, ""
        if not tls:
            tls = ImapProvider.TlsMode.IMPLICIT if port == 465 else ImapProvider.TlsMode.STARTTLS
        return host, port, tls
