"""Tracer emails (spec: "Tracer Emails"; design section 11).

Every TRACER_INTERVAL seconds each engine node picks a random tracer-enabled user among the
mailboxes it watches, records NUM_TRACERS TracerLog rows and mails each of them to the user
(``Subject: TRACER: <uid>``) through the provider's SMTP server. When the mail comes back in
through IMAP, the persist plan (sync/persist.py) sets ``detected_at`` and delivers no
webhook. A tracer that could not be sent stays undetected: the dashboard counts it as a
failure.

The loop never ends the engine: every round's errors are logged (never credentials) and the
next round runs as usual.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import aiosmtplib
from django.conf import settings
from django.utils import timezone

from superimap.engine import store
from superimap.engine.oauth import access_tokens
from superimap.imapclient import client_tls_context
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import ImapProvider
from superimap.platform import dboutage, netguard
from superimap.tracers.models import TracerLog

log = logging.getLogger("superimap.tracers")

SMTP_TIMEOUT_SECONDS = 30.0
WATCHED = (MailboxUser.Status.IDLE, MailboxUser.Status.POLLING)


@dataclass(frozen=True)
class TracerTarget:
    """One round: whom to mail, through which server, and the tracer uids to send."""

    config: store.MailboxConfig  # who signs in, and how (password or OAuth)
    address: str
    host: str
    port: int
    tls: str
    uids: tuple[str, ...]

    @property
    def user_id(self) -> int:
        return self.config.user_id


def pick_target(held: list[int], count: int) -> TracerTarget | None:
    """Choose a random watched, tracer-enabled user among ``held``; create its TracerLogs.

    Tracer users are few, so they are read all and intersected with the held set here
    (no id list in the query, whatever the number of mailboxes held).
    """
    held_ids = set(held)
    candidates = [
        user_id
        for user_id in MailboxUser.objects.filter(
            enable_tracer=True, archived=False, connected_at__isnull=False, status__in=WATCHED
        ).values_list("id", flat=True)
        if user_id in held_ids
    ]
    if not candidates:
        return None
    user = (
        MailboxUser.objects.select_related("connection__provider", "connection__partner")
        .filter(id=random.choice(candidates))
        .first()
    )
    if user is None or not user.watchable or not user.enable_tracer:
        return None
    host, port, tls = user.connection.smtp_server()
    now = timezone.now()
    uids = tuple(secrets.token_hex(16) for _ in range(count))
    TracerLog.objects.bulk_create(TracerLog(tracer_uid=uid, user=user, sent_at=now) for uid in uids)
    return TracerTarget(
        config=store.config_of(user),
        address=user.email or user.login_username,
        host=host,
        port=port,
        tls=tls,
        uids=uids,
    )


def tracer_message(address: str, uid: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = address
    message["To"] = address
    message["Subject"] = f"TRACER: {uid}"
    message["Date"] = format_datetime(timezone.now())
    message["Message-ID"] = make_msgid(domain="tracer.superimap")
    message.set_content("SuperIMAP tracer email: it measures delivery and is never forwarded.\n")
    return message


class TracerSender:
    """The tracer loop of one engine node (started and cancelled by Engine.run)."""

    def __init__(
        self,
        engine,
        interval: float | None = None,
        count: int | None = None,
        timeout: float = SMTP_TIMEOUT_SECONDS,
    ) -> None:
        self.engine = engine
        self.interval = interval if interval is not None else float(settings.TRACER_INTERVAL)
        self.count = count if count is not None else settings.NUM_TRACERS
        self.timeout = timeout
        self.rounds = 0
        self.sent = 0
        self.failed = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.count <= 0:
                continue
            try:
                await self.send_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a tracer round must never end the engine
                if not dboutage.lost(exc):
                    log.exception("tracer round on %s failed", self.engine.node_id)

    async def send_round(self) -> TracerTarget | None:
        held = list(self.engine.sessions)
        if not held:
            return None
        target = await self.engine.pool.run(pick_target, held, self.count)
        if target is None:
            return None
        self.rounds += 1
        sent_before = self.sent
        try:
            await self._send(target)
        except Exception as exc:  # noqa: BLE001 - logged; the rows stay undetected
            self.failed += len(target.uids) - (self.sent - sent_before)
            log.warning(
                "tracer: mailbox %s: sending via %s:%s failed: %s",
                target.user_id,
                target.host,
                target.port,
                _describe(exc),
            )
        return target

    async def _send(self, target: TracerTarget) -> None:
        if not target.host:
            raise ValueError("no SMTP host configured for this connection")
        config = target.config
        if target.tls == ImapProvider.TlsMode.NONE and not config.insecure_tls:
            raise ValueError("SMTP without TLS is only allowed for loopback test providers")
        # aiosmtplib gets a socket connected to the checked address (not the name, which
        # it would resolve again); hostname stays the name, for TLS.
        async with asyncio.timeout(self.timeout):
            sock = await netguard.connect_async(
                target.host, target.port, allow_private=settings.IMAP_ALLOW_PRIVATE_HOSTS
            )
        smtp = aiosmtplib.SMTP(
            hostname=target.host,
            sock=sock,
            timeout=self.timeout,
            use_tls=target.tls == ImapProvider.TlsMode.IMPLICIT,
            start_tls=target.tls == ImapProvider.TlsMode.STARTTLS,
            tls_context=client_tls_context(config.insecure_tls),
        )
        try:
            await smtp.connect()
        except BaseException:
            sock.close()
            raise
        try:
            if config.auth_kind == ImapProvider.AuthKind.OAUTH2:
                token = await access_tokens(self.engine).get(config)
                await smtp.auth_xoauth2(config.username, token)
            else:
                await smtp.login(config.username, config.password)
            for uid in target.uids:
                await smtp.send_message(tracer_message(target.address, uid))
                self.sent += 1
        finally:
            try:
                await smtp.quit()
            except Exception:  # noqa: BLE001 - the connection may be gone already
                smtp.close()
        log.info("tracer: %d sent to mailbox %s", len(target.uids), target.user_id)


def _describe(exc: BaseException) -> str:
    """The error class and its message, shortened (server replies, never credentials)."""
    text = str(exc).strip().replace("\n", " ")[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
