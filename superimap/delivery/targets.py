"""Webhook URLs a partner may use: http(s) only, and in production only public addresses.

Checked when a URL is saved (Partner.clean, createpartner) and again when the worker
connects (netguard.CheckedConnector), unless WEBHOOK_ALLOW_PRIVATE is on.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings

from superimap.platform.netguard import PrivateTargetRefused, check_host


class WebhookTargetError(ValueError):
    """A webhook URL that is refused; the message says why."""


def check_webhook_url(url: str, *, allow_private: bool | None = None) -> None:
    if allow_private is None:
        allow_private = settings.WEBHOOK_ALLOW_PRIVATE
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookTargetError(f"not a valid URL: {exc}") from None
    if parts.scheme not in {"http", "https"}:
        raise WebhookTargetError("webhook URLs must use http or https")
    if not parts.hostname:
        raise WebhookTargetError("webhook URLs need a host")
    if allow_private:
        return
    try:
        check_host(parts.hostname, port)
    except PrivateTargetRefused as exc:
        raise WebhookTargetError(
            f"refused: {exc} (internal addresses need WEBHOOK_ALLOW_PRIVATE=true)"
        ) from None
    except OSError as exc:
        raise WebhookTargetError(f"{parts.hostname} cannot be resolved: {exc}") from None
