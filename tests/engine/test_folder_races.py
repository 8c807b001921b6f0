"""Mail that lands while the session visits a secondary folder (design.md 4.3 and 4.10).

A message that reaches folder B while B is EXAMINEd comes as an untagged EXISTS there, not
as a NOTIFY ``* STATUS`` report: a benchmark lost 17 of 500 that way until the session
asked STATUS again after each visit. A chaos server with a hook plays each interleaving at
one exact command; every test counts, per folder, messages = new_mail deliveries + skips,
and checks that all of them were fetched before the session went back to IDLE.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest
from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.chaos_server import ChaosImapServer, ImapSession, _text
from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.engine import morefolders
from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.engine import FAST, RunningEngine, loopback_connection, wait_for

FOLDERS = ("INBOX", "B")
# NOTIFY's safety-net poll comes only at the IDLE re-issue (60 s): within the test only a
# report or the STATUS asked after a visit finds mail in B.
NOTIFY = FAST
# Polling every second: the next poll would find B's mail late; the test asks for it
# before the session goes back to IDLE.
POLLING = replace(FAST, use_notify=False, folder_poll=1.0)


@dataclass(frozen=True)
class Race:
    """Where the hook fires (after the server answered that command) and which folder
    the message lands in."""

    at: str  # "examined-search", "reselect" or "primary-search"
    folder: str


class RacingSession(ImapSession):
    def dispatch(self, command) -> None:
        before = self.selected_folder if self.selected else None
        super().dispatch(command)
        self.server.answered(self, command, before)


class RacingServer(ChaosImapServer):
    """One user (user0/pass0) with INBOX and B; ``race`` lands a message once, after the
    first visit of B has reached the command it names. Records the (folder, uid) of every
    body fetch and which of them were fetched when the first IDLE after the race began."""

    def __init__(self, notify: bool, race: Race) -> None:
        super().__init__(users=1, folders=FOLDERS, notify=notify, seed=1)
        self.race = race
        self.armed = False  # set once the first message is in B
        self.fired = False
        self.reselected = False
        self.idling = asyncio.Event()
        self.fetched: set[tuple[str, int]] = set()
        self.fetched_at_idle: set[tuple[str, int]] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: RacingSession(self), self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def deliver(self, folder: str, subject: str) -> None:
        raw = make_message(subject, "a@example.test", "user0@example.test", subject)
        self.add_message("user0", raw, folder=folder)

    def in_folders(self) -> set[tuple[str, int]]:
        return {(f, m.uid) for f in FOLDERS for m in self.mailbox("user0", f).messages}

    def answered(self, session: ImapSession, command, before: str | None) -> None:
        name, folder = command.name, session.selected_folder
        if name == "UID FETCH" and "BODY" in str(command.args[1]).upper():
            self.fetched.update((folder, int(uid)) for uid in _text(command.args[0]).split(","))
        if name == "IDLE":
            self.idling.set()
            if self.fired and self.fetched_at_idle is None:
                self.fetched_at_idle = set(self.fetched)
        if not self.armed or self.fired:
            return
        if name == "SELECT" and before == "B" and folder == "INBOX":
            self.reselected = True
        at = self.race.at
        if (
            (at == "examined-search" and name == "UID SEARCH" and folder == "B")
            or (at == "reselect" and name == "SELECT" and self.reselected)
            or (
                at == "primary-search"
                and name == "UID SEARCH"
                and folder == "INBOX"
                and self.reselected
            )
        ):
            self.fired = True
            self.deliver(self.race.folder, "raced")
            # The report a server with NOTIFY would owe is never sent: B's because the
            # server dropped (or the session consumed) it, INBOX's because INBOX is not
            # among the folders of NOTIFY SET.
            session.notify_pending.discard(self.race.folder)


def _counts(user: MailboxUser, server: RacingServer) -> None:
    """Per folder: messages = MailLog rows (each UID once) = new_mail + skips."""
    close_old_connections()
    for folder in FOLDERS:
        uids = {m.uid for m in server.mailbox("user0", folder).messages}
        rows = MailLog.objects.filter(user=user, folder=folder)
        assert sorted(rows.values_list("uid", flat=True)) == sorted(uids), folder
        delivered = Delivery.objects.filter(
            user=user, kind="new_mail", stored_payload__payload__folder=folder
        )
        assert delivered.count() == rows.filter(skipped_reason="").count(), folder


def _new_mail(user: MailboxUser) -> int:
    close_old_connections()
    return Delivery.objects.filter(user=user, kind="new_mail").count()


def _play(partner, monkeypatch, settings, race: Race) -> tuple[MailboxUser, RacingServer]:
    # The first STATUS poll a whole period after the start, not at a random moment.
    monkeypatch.setattr(morefolders, "random", SimpleNamespace(uniform=lambda low, high: high))
    server = RacingServer(notify=settings.use_notify, race=race)

    async def scenario() -> MailboxUser:
        await server.start()
        user = await asyncio.to_thread(
            lambda: MailboxUser.objects.create(
                connection=loopback_connection(partner, server.port),
                tag="racing",
                email="user0@example.test",
                login_username="user0",
                password="pass0",
                connected_at=timezone.now(),
                folders=list(FOLDERS),
            )
        )
        try:
            async with RunningEngine(session_settings=settings):
                await asyncio.wait_for(server.idling.wait(), 5)
                server.armed = True
                server.deliver("B", "first in B")  # reported by NOTIFY, or found by a poll
                await wait_for(lambda: _new_mail(user) >= 2, timeout=5)
                await wait_for(lambda: server.fetched_at_idle is not None, timeout=2)
        finally:
            await server.stop()
        return user

    return asyncio.run(scenario()), server


MODES = pytest.mark.parametrize("settings", [NOTIFY, POLLING], ids=["notify", "status-polling"])


@MODES
def test_it_delivers_mail_that_reached_b_while_b_was_examined(mail_partner, monkeypatch, settings):
    """(a) After the UID SEARCH of B's catch-up, before the session leaves B: the server
    says * 2 EXISTS in B, and sends no STATUS report for the folder that is selected."""
    user, server = _play(mail_partner, monkeypatch, settings, Race("examined-search", "B"))
    assert server.fired
    assert server.fetched_at_idle >= server.in_folders() == {("B", 1), ("B", 2)}
    _counts(user, server)


@MODES
@pytest.mark.parametrize("at", ["reselect", "primary-search"])
def test_it_delivers_mail_that_reached_b_after_the_primary_was_selected_again(
    mail_partner, monkeypatch, settings, at
):
    """(b) Between the SELECT of the primary folder after the visit and the next IDLE (right
    after the SELECT, or after the primary's catch-up SEARCH), with B's report never sent."""
    user, server = _play(mail_partner, monkeypatch, settings, Race(at, "B"))
    assert server.fired
    assert server.fetched_at_idle >= server.in_folders() == {("B", 1), ("B", 2)}
    _counts(user, server)


@MODES
def test_it_delivers_mail_that_reached_the_primary_while_b_was_visited(
    mail_partner, monkeypatch, settings
):
    """(c) A message in INBOX after the UID SEARCH of B: the catch-up after the SELECT of
    INBOX finds it."""
    user, server = _play(mail_partner, monkeypatch, settings, Race("examined-search", "INBOX"))
    assert server.fired
    assert server.fetched_at_idle >= server.in_folders() == {("B", 1), ("INBOX", 1)}
    _counts(user, server)
