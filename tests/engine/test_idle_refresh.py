"""Servers that only look for new mail when IDLE starts (issue 8 item 3).

Stock Cyrus (without idled) and Courier (without enhanced IDLE) accept IDLE but check the
mailbox only every 60 s or when IDLE is issued again. The scripted server here plays the
strict form: mail that arrives becomes visible to the session (EXISTS, SEARCH, FETCH) only
when the client issues IDLE again, and nothing is ever pushed during an IDLE.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.engine.session import SessionSettings, idle_period, idle_wait
from superimap.engine.store import MailboxConfig
from superimap.mailboxes.models import MailboxUser
from superimap.platform.config import ConfigError, env_idle_periods
from tests.helpers.configs import mailbox_config
from tests.helpers.engine import (
    FAST,
    LoopbackServer,
    RunningEngine,
    answer_uid_command,
    loopback_connection,
    wait_for,
)


class CheckOnIdleServer(LoopbackServer):
    """A tiny IMAP server whose view of the mailbox is refreshed only by a new IDLE."""

    def __init__(self) -> None:
        self.arrived: list[bytes] = []  # in the mailbox on "disk"
        self.visible: list[bytes] = []  # what the session has been told about
        self.idles = 0

    async def serve(self, reader, writer) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE] mail.example.test ready\r\n")
        try:
            while line := await reader.readline():
                tag, _, rest = line.decode().strip().partition(" ")
                command = rest.upper()
                if command.startswith("SELECT"):
                    self.visible = list(self.arrived)
                    writer.write(
                        f"* {len(self.visible)} EXISTS\r\n* OK [UIDVALIDITY 9] ok\r\n"
                        f"* OK [UIDNEXT {len(self.visible) + 1}] ok\r\n{tag} OK sel\r\n".encode()
                    )
                elif command.startswith(("UID SEARCH", "UID FETCH")):
                    answer_uid_command(writer, tag, command, self.visible)
                elif command == "IDLE":
                    self.idles += 1
                    writer.write(b"+ idling\r\n")
                    if len(self.arrived) > len(self.visible):  # the check on re-issue
                        self.visible = list(self.arrived)
                        writer.write(f"* {len(self.visible)} EXISTS\r\n".encode())
                    await writer.drain()
                    await reader.readline()  # DONE; nothing is pushed meanwhile
                    writer.write(f"{tag} OK idle done\r\n".encode())
                elif command == "LOGOUT":
                    writer.write(f"* BYE bye\r\n{tag} OK bye\r\n".encode())
                    break
                else:  # LOGIN, CAPABILITY, LIST, NOOP
                    writer.write(f"{tag} OK\r\n".encode())
                await writer.drain()
        finally:
            writer.close()


def _new_mail(user_id: int) -> int:
    close_old_connections()
    return Delivery.objects.filter(user_id=user_id, kind="new_mail").count()


def _status(user_id: int) -> str:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id).status


def _idles_in(partner, idle_by_host: dict[str, float], seconds: float) -> int:
    """IDLE commands the server saw in ``seconds`` after the session's first one."""
    server = CheckOnIdleServer()

    async def scenario() -> int:
        port = await server.start()

        def make_user() -> MailboxUser:
            return MailboxUser.objects.create(
                connection=loopback_connection(partner, port),
                tag="periods",
                login_username="u",
                password="p",
                connected_at=timezone.now(),
            )

        user = await asyncio.to_thread(make_user)
        settings = replace(FAST, idle_reissue=60, idle_by_host=idle_by_host)
        try:
            async with RunningEngine(session_settings=settings):
                await wait_for(lambda: _status(user.id) == "idle")
                first = server.idles
                await asyncio.sleep(seconds)
                return server.idles - first
        finally:
            await server.stop()

    return asyncio.run(scenario())


def test_a_host_named_in_imap_idle_seconds_gets_its_own_idle_period(mail_partner):
    # IMAP_IDLE_SECONDS (engine settings' idle_by_host) by imap_host: the loopback
    # connections' 127.0.0.1 re-issues every 0.5 s here, where the default is 60 s.
    assert _idles_in(mail_partner, {"127.0.0.1": 0.5}, 2.0) >= 3


def test_a_host_not_named_keeps_the_default_idle_period(mail_partner):
    assert _idles_in(mail_partner, {"imap.example.org": 0.5}, 2.0) == 0


def _seconds_to_see_mail(partner, idle_refresh: int | None, wait: float) -> float | None:
    """Deliver one message while the engine idles; seconds until its webhook row, or None."""
    server = CheckOnIdleServer()

    async def scenario() -> float | None:
        port = await server.start()

        def make_user() -> MailboxUser:
            connection = loopback_connection(partner, port)
            connection.idle_refresh_seconds = idle_refresh
            connection.save()
            return MailboxUser.objects.create(
                connection=connection,
                tag="cyrus",
                login_username="u",
                password="p",
                connected_at=timezone.now(),
            )

        user = await asyncio.to_thread(make_user)
        try:
            async with RunningEngine(session_settings=replace(FAST, idle_reissue=60)):
                await wait_for(lambda: _status(user.id) == "idle")
                server.arrived.append(make_message("late", "a@example.test", "b@x.test", "hi"))
                started = time.monotonic()
                try:
                    await wait_for(lambda: _new_mail(user.id), timeout=wait)
                except AssertionError:
                    return None
                return time.monotonic() - started
        finally:
            await server.stop()

    return asyncio.run(scenario())


def test_idle_refresh_finds_mail_a_server_reports_only_on_reissue(mail_partner):
    seconds = _seconds_to_see_mail(mail_partner, idle_refresh=1, wait=5)
    assert seconds is not None and seconds < 2.5


def test_without_idle_refresh_that_server_tells_nothing_until_the_reissue(mail_partner):
    # The control: IDLE re-issued every 60 s only (automatic: the greeting names neither
    # Cyrus nor Courier), so nothing in 3 s.
    assert _seconds_to_see_mail(mail_partner, idle_refresh=None, wait=3) is None


def _config() -> MailboxConfig:
    return mailbox_config(tag="t", host="h", username="u", password="p", enable_tracer=False)


def test_the_idle_period_is_the_shorter_of_refresh_and_reissue() -> None:
    config = _config()
    settings = SessionSettings(idle_reissue=1500)
    assert idle_period(replace(config, idle_refresh=0), settings) == 1500
    assert idle_period(replace(config, idle_refresh=30), settings) == 30
    assert idle_period(replace(config, idle_refresh=3000), settings) == 1500


def test_the_host_period_replaces_the_default_and_refresh_may_shorten_it() -> None:
    config = replace(_config(), host="IMAP.Example.ORG", idle_refresh=0)
    periods = {"imap.example.org": 1740.0, "imap.gmx.net": 600.0}
    settings = SessionSettings(idle_reissue=1680, idle_by_host=periods)
    assert idle_period(config, settings) == 1740  # longer than the default: as named
    assert idle_period(replace(config, host="imap.gmx.net"), settings) == 600
    assert idle_period(replace(config, host="other.example"), settings) == 1680
    assert idle_period(replace(config, idle_refresh=30), settings) == 30
    assert idle_period(replace(config, idle_refresh=1800), settings) == 1740


@pytest.mark.parametrize(
    ("raw", "periods"),
    [
        ("", {}),
        (
            " IMAP.GMX.net = 600 , imap.example.org=1_740,",
            {"imap.gmx.net": 600, "imap.example.org": 1740},
        ),
        ("a=60,a=120", {"a": 120}),  # the last one wins
    ],
)
def test_imap_idle_seconds_reads_host_seconds_entries(monkeypatch, raw, periods) -> None:
    monkeypatch.setenv("IMAP_IDLE_SECONDS", raw)
    assert env_idle_periods("IMAP_IDLE_SECONDS", maximum=1740) == periods


@pytest.mark.parametrize("raw", ["imap.gmx.net", "=600", "h=0", "h=1741", "h=x", "h=1.5"])
def test_a_bad_imap_idle_seconds_entry_names_the_variable_and_the_entry(monkeypatch, raw) -> None:
    monkeypatch.setenv("IMAP_IDLE_SECONDS", f"ok.example=60,{raw}")
    with pytest.raises(ConfigError) as caught:
        env_idle_periods("IMAP_IDLE_SECONDS", maximum=1740)
    assert str(caught.value).startswith("IMAP_IDLE_SECONDS: ")
    assert repr(raw) in str(caught.value)


@pytest.mark.parametrize(
    ("greeting", "idle_refresh", "expected"),
    [
        ("imap.example.org Cyrus IMAP 3.6.1-Debian server ready", None, 15),
        ("Courier-IMAP ready. Copyright 1998-2018 Double Precision, Inc.", None, 15),
        ("Dovecot (Debian) ready.", None, 1500),
        ("Gimap ready for requests from 192.0.2.1", None, 1500),
        ("imap.example.org Cyrus IMAP 3.6.1-Debian server ready", 0, 1500),
        ("Dovecot (Debian) ready.", 40, 40),
    ],
)
def test_automatic_idle_refresh_knows_the_slow_servers(greeting, idle_refresh, expected) -> None:
    config = replace(_config(), idle_refresh=idle_refresh)
    assert idle_period(config, SessionSettings(idle_reissue=1500), greeting) == expected


@pytest.mark.parametrize(
    ("now", "seconds", "expected"),
    [
        (100.3, 1500.0, 1499.7),  # ends at 1600.0, 0.3 s early: never later than the period
        (100.0, 1500.0, 1500.0),  # already on the grid
        (100.999, 15.0, 14.001),  # the slow servers' 15 s: at 115.0
        (100.5, 1.9, 1.9),  # under two steps: as asked (a short wait is not cut to nothing)
        (100.5, 0.2, 0.2),
    ],
)
def test_idle_periods_end_on_the_whole_second_so_reissues_share_a_wake_up(
    now, seconds, expected
) -> None:
    waited = idle_wait(now, seconds)
    assert waited == pytest.approx(expected)
    assert seconds - 1.0 < waited <= seconds
    if seconds >= 2.0:
        assert (now + waited) % 1.0 == pytest.approx(0.0, abs=1e-6)
