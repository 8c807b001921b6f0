"""Partners (applications using SuperIMAP), IMAP providers and partner connections."""

from __future__ import annotations

import base64
import hashlib
import secrets

from django.conf import settings
from django.db import models

from superimap.fields import EncryptedTextField

OAUTH_ENDPOINTS = ("authorize", "token", "revoke", "userinfo")


def new_api_key() -> str:
    return secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class ImapProvider(models.Model):
    """How to reach one kind of mailbox. Seeded by a data migration."""

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
    imap_host = models.CharField(max_length=255, blank=True)
    imap_port = models.PositiveIntegerField(default=993)
    imap_tls = models.CharField(max_length=16, choices=TlsMode.choices, default=TlsMode.IMPLICIT)
    smtp_host = models.CharField(max_length=255, blank=True)
    smtp_port = models.PositiveIntegerField(default=587)
    oauth_authorize_url = models.URLField(blank=True)
    oauth_token_url = models.URLField(blank=True)
    oauth_revoke_url = models.URLField(blank=True)
    oauth_userinfo_url = models.URLField(blank=True)
    oauth_scopes = models.CharField(max_length=500, blank=True)
    folder = models.CharField(max_length=255, default="INBOX")
    # Loopback providers may skip TLS verification; usable only with ALLOW_LOOPBACK_IMAP.
    loopback_only = models.BooleanField(default=False)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code

    @property
    def host_per_connection(self) -> bool:
        return not self.imap_host

    def is_usable(self) -> bool:
        return not self.loopback_only or settings.ALLOW_LOOPBACK_IMAP


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
        help_text="Comma-separated host names that success/failure callbacks may point to.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        if not self.api_key:
            self.api_key = new_api_key()
        if not self.webhook_secret:
            self.webhook_secret = new_webhook_secret()
        self.api_key_hash = hash_api_key(self.api_key)
        super().save(*args, **kwargs)

    @classmethod
    def for_api_key(cls, api_key: str) -> Partner | None:
        if not api_key:
            return None
        return cls.objects.filter(api_key_hash=hash_api_key(api_key)).first()

    def webhook_url(self, kind: str) -> str:
        return {
            "new_mail": self.new_mail_webhook,
            "user_connected": self.user_connected_webhook,
            "user_disconnected": self.user_disconnected_webhook,
        }[kind]

    def webhook_fields(self) -> list[str]:
        return [f.name for f in self._meta.get_fields() if f.name.endswith("_webhook")]

    def disable_webhook(self, kind: str) -> str:
        """Switch off the URL for `kind` (after a 410 Gone); returns the URL it had."""
        field = f"{kind}_webhook"
        url = getattr(self, field)
        type(self).objects.filter(id=self.id).update(**{field: ""})
        setattr(self, field, "")
        return url

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from superimap.delivery.targets import WebhookTargetError, check_webhook_url

        errors = {}
        for field in self.webhook_fields():
            url = getattr(self, field)
            if url:
                try:
                    check_webhook_url(url)
                except WebhookTargetError as exc:
                    errors[field] = str(exc)
        if errors:
            raise ValidationError(errors)

    def redirect_allowed(self, url: str) -> bool:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            return False
        hosts = {h.strip().lower() for h in self.allowed_redirect_hosts.split(",") if h.strip()}
        for default in (self.success_url, self.failure_url):
            if default:
                hosts.add((urlsplit(default).hostname or "").lower())
        return parts.hostname.lower() in hosts


class Connection(models.Model):
    """A partner's use of one provider, with the partner's OAuth client or server settings."""

    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="connections")
    provider = models.ForeignKey(ImapProvider, on_delete=models.PROTECT, related_name="connections")
    oauth_client_id = models.CharField(max_length=500, blank=True)
    oauth_client_secret = EncryptedTextField()
    # Server settings for providers whose host is given per connection (PLAIN, LOOPBACK).
    imap_host = models.CharField(max_length=255, blank=True)
    imap_port = models.PositiveIntegerField(null=True, blank=True)
    imap_tls = models.CharField(max_length=16, choices=ImapProvider.TlsMode.choices, blank=True)
    # SMTP for tracer emails, likewise only for host-per-connection providers.
    smtp_host = models.CharField(max_length=255, blank=True)
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

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.oauth_base_url and self.provider_id and not self.provider.loopback_only:
            raise ValidationError(
                {"oauth_base_url": "Only loopback test providers take an OAuth base URL."}
            )

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
