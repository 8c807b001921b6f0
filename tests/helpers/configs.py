"""A mailbox session's configuration (engine/store.py MailboxConfig) for tests that drive
the engine's connection, OAuth or tracer code without a database row."""

from __future__ import annotations

import dataclasses

from superimap.engine.store import MailboxConfig


def mailbox_config(**fields) -> MailboxConfig:
    """A password mailbox `alice` on imap.example.com:993 (implicit TLS), tracer on; any
    field can be given."""
    base = MailboxConfig(
        user_id=1,
        tag="alice",
        provider_code="PLAIN",
        host="imap.example.com",
        port=993,
        tls="implicit",
        insecure_tls=False,
        auth_kind="password",
        username="alice",
        password="pw",
        refresh_token="",
        folder="INBOX",
        uid_validity=None,
        last_uid=None,
        enable_tracer=True,
    )
    return dataclasses.replace(base, **fields)
