"""Every way a server answers a batch fetch while messages vanish, played by a scripted
IMAP server: each message ends delivered as new_mail or skipped with a reason, so
messages in the folder = new_mail deliveries + recorded skips, and the checkpoint never
passes a UID that is neither persisted nor confirmed gone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from django.db import close_old_connections
from django.utils import timezone
from prometheus_client import REGISTRY

from devtools.imap.mailstore import Mailbox
from devtools.imap.server import untagged_data
from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.engine import LoopbackServer, RunningEngine, loopback_connection, wait_for
from tests.helpers.engine import uid_set as uid_set_of

UIDVALIDITY = 7
# on_fetch(server, uids, items) -> (untagged responses, tagged status text) or None to
# answer normally.
FetchHook = Callable[["FolderServer", list[int], tuple[str, ...]], tuple[list[bytes], str] | None]


class FolderServer(LoopbackServer):
    """A tiny IMAP server over one in-memory folder (devtools.imap.mailstore)."""

    def __init__(self, count: int, on_fetch: FetchHook | None = None) -> None:
        self.box = Mailbox(UIDVALIDITY)
        now = datetime.now(UTC).replace(microsecond=0)
        for i in range(count):
            self.box.append(make_message(f"m{i + 1}", "a@example.test", "u@example.test", "x"), now)
        self.on_fetch = on_fetch
        self.body_fetches = 0
        self.drop_on_noop = False  # the next NOOP closes the connection instead

    def answer(self, uids: list[int], items: tuple[str, ...], skip=()) -> list[bytes]:
        """The normal FETCH responses for ``uids`` (minus ``skip``)."""
        wanted = ",".join(str(u) for u in uids if u not in skip) or "0"
        return self.box.uid_fetch(wanted, items, readonly=False) if wanted != "0" else []

    def expunge(self, uid: int) -> bytes:
        seq = self.box.expunge(uid)
        return untagged_data(f"{seq} EXPUNGE")

    async def serve(self, reader, writer) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
        try:
            while line := await reader.readline():
                tag, _, rest = line.decode().strip().partition(" ")
                command = rest.upper()
                if command.startswith("LOGIN"):
                    writer.write(f"{tag} OK [CAPABILITY IMAP4rev1 IDLE] in\r\n".encode())
                elif command.startswith("SELECT"):
                    box = self.box
                    writer.write(
                        f"* {len(box.messages)} EXISTS\r\n* OK [UIDVALIDITY {box.uidvalidity}] "
                        f"ok\r\n* OK [UIDNEXT {box.uidnext}] ok\r\n{tag} OK selected\r\n".encode()
                    )
                elif command.startswith("UID SEARCH"):
                    uids = self.box.uid_search(tuple(rest.split()[2:]))
                    found = " ".join(str(u) for u in uids)
                    writer.write(f"* SEARCH {found}\r\n{tag} OK done\r\n".encode())
                elif command.startswith("UID FETCH"):
                    _, _, uid_set, items_text = rest.split(" ", 3)
                    items = tuple(items_text.strip("()").upper().split())
                    largest = self.box.largest_uid
                    uids = uid_set_of(uid_set, largest)
                    if ":" in uid_set:  # a range: the messages in it
                        present = {m.uid for m in self.box.messages}
                        uids = [u for u in uids if u in present]
                    answer = None
                    if "BODY.PEEK[]" in items:
                        self.body_fetches += 1
                        if self.on_fetch is not None:
                            answer = self.on_fetch(self, uids, items)
                    responses, status = answer or (self.answer(uids, items), "OK fetched")
                    writer.write(b"".join(responses) + f"{tag} {status}\r\n".encode())
                elif command == "NOOP" and self.drop_on_noop:
                    self.drop_on_noop = False
                    break
                elif command == "IDLE":
                    writer.write(b"+ idling\r\n")
                    await writer.drain()
                    await reader.readline()  # DONE
                    writer.write(f"{tag} OK idle done\r\n".encode())
                elif command == "LOGOUT":
                    writer.write(f"* BYE bye\r\n{tag} OK bye\r\n".encode())
                    break
                else:
                    writer.write(f"{tag} OK\r\n".encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def _user(user_id: int) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id)


def _skipped(reason: str) -> float:
    return REGISTRY.get_sample_value("superimap_mail_skipped_total", {"reason": reason}) or 0.0


def _run(partner, server: FolderServer, last_uid: int) -> MailboxUser:
    """Catch up on the whole folder (checkpoint at 0) until the checkpoint is ``last_uid``."""

    async def scenario() -> MailboxUser:
        port = await server.start()
        user = await asyncio.to_thread(
            lambda: MailboxUser.objects.create(
                connection=loopback_connection(partner, port),
                tag="shapes",
                login_username="u",
                password="p",
                connected_at=timezone.now(),
                uid_validity=UIDVALIDITY,
                last_uid=0,
            )
        )
        try:
            async with RunningEngine():
                await wait_for(lambda: _user(user.id).last_uid == last_uid, timeout=15)
                await wait_for(lambda: _user(user.id).status == "idle")
        finally:
            await server.stop()
        return await asyncio.to_thread(_user, user.id)

    return asyncio.run(scenario())


def _outcome(user: MailboxUser) -> tuple[list[str], dict[int, str]]:
    """Subjects delivered as new_mail, and {uid: reason} of the skips."""
    deliveries = Delivery.objects.filter(user=user, kind="new_mail").order_by("id")
    subjects = [d.payload["envelope"]["subject"] for d in deliveries]
    skips = dict(
        MailLog.objects.filter(user=user)
        .exclude(skipped_reason="")
        .values_list("uid", "skipped_reason")
    )
    return subjects, skips


def _subjects(*numbers: int) -> list[str]:
    return [f"m{n}" for n in numbers]


def test_a_nil_body_for_a_message_expunged_meanwhile_is_skipped_as_expunged(mail_partner, caplog):
    caplog.set_level(logging.INFO, logger="superimap.engine")

    def nil_for_uid_2(server, uids, items):
        if server.body_fetches > 1:
            return None
        expunge = server.expunge(2)
        nil = b"* 2 FETCH (UID 2 BODY[] NIL)\r\n"
        return [nil, *server.answer(uids, items, skip={2}), expunge], "OK fetched"

    before = _skipped("expunged")
    server = FolderServer(5, nil_for_uid_2)
    user = _run(mail_partner, server, last_uid=5)
    subjects, skips = _outcome(user)
    assert subjects == _subjects(1, 3, 4, 5)
    assert skips == {2: "expunged"}
    assert len(subjects) + len(skips) == 5
    row = MailLog.objects.get(user=user, uid=2)
    assert (row.uid_validity, row.folder) == (UIDVALIDITY, "INBOX")
    assert row.size > 0  # known from the first FETCH
    assert _skipped("expunged") == before + 1
    lines = [r.getMessage() for r in caplog.records if "skipped uid" in r.getMessage()]
    assert lines == [
        f"mailbox {user.connection.partner.name}/{user.connection.provider.code}/{user.tag} "
        f"(id {user.id}): skipped uid 2 (uidvalidity 7, INBOX) as expunged: "
        f"message_id=- size={row.size}"
    ]


def test_a_uid_left_out_with_ok_expungeissued_is_skipped_as_expunged(mail_partner):
    def leave_out_3(server, uids, items):
        if server.body_fetches > 1:
            return None
        server.expunge(3)
        return server.answer(uids, items), "OK [EXPUNGEISSUED] some messages were expunged"

    user = _run(mail_partner, FolderServer(5, leave_out_3), last_uid=5)
    subjects, skips = _outcome(user)
    assert subjects == _subjects(1, 2, 4, 5)
    assert skips == {3: "expunged"}


def test_a_no_expungeissued_with_the_other_messages_returned(mail_partner):
    def no_for_1(server, uids, items):
        if server.body_fetches > 1:
            return None
        server.expunge(1)
        return server.answer(uids, items), "NO [EXPUNGEISSUED] some messages were expunged"

    user = _run(mail_partner, FolderServer(4, no_for_1), last_uid=4)
    subjects, skips = _outcome(user)
    assert subjects == _subjects(2, 3, 4)
    assert skips == {1: "expunged"}


def test_answers_in_another_order_than_asked_are_all_delivered(mail_partner):
    def reversed_answer(server, uids, items):
        return list(reversed(server.answer(uids, items))), "OK fetched"

    user = _run(mail_partner, FolderServer(6, reversed_answer), last_uid=6)
    subjects, skips = _outcome(user)
    assert sorted(subjects) == _subjects(1, 2, 3, 4, 5, 6)
    assert skips == {}


def test_a_message_missing_once_but_still_present_is_fetched_again(mail_partner):
    def nil_once(server, uids, items):
        if server.body_fetches > 1:
            return None
        nil = b"* 2 FETCH (UID 2 BODY[] NIL)\r\n"
        return [nil, *server.answer(uids, items, skip={2})], "OK fetched"

    server = FolderServer(4, nil_once)
    user = _run(mail_partner, server, last_uid=4)
    subjects, skips = _outcome(user)
    assert sorted(subjects) == _subjects(1, 2, 3, 4)
    assert skips == {}
    assert server.body_fetches == 2  # the batch, then uid 2 again


def test_a_plain_no_for_one_message_then_fetched_again(mail_partner):
    def no_once(server, uids, items):
        if server.body_fetches > 1:
            return None
        return server.answer(uids, items, skip={3}), "NO could not read one message"

    user = _run(mail_partner, FolderServer(4, no_once), last_uid=4)
    subjects, skips = _outcome(user)
    assert sorted(subjects) == _subjects(1, 2, 3, 4)
    assert skips == {}


def test_a_message_never_returned_is_skipped_and_does_not_block_later_ones(mail_partner):
    def never_2(server, uids, items):
        return server.answer(uids, items, skip={2}), "NO [SERVERBUG] cannot read message"

    before = _skipped("unfetchable")
    server = FolderServer(5, never_2)
    user = _run(mail_partner, server, last_uid=5)
    subjects, skips = _outcome(user)
    assert subjects == _subjects(1, 3, 4, 5)
    assert skips == {2: "unfetchable"}
    assert server.body_fetches == 3  # FETCH_ROUNDS
    assert _skipped("unfetchable") == before + 1


def test_a_temporary_no_for_the_whole_fetch_retries_the_session(mail_partner):
    def unavailable_once(server, uids, items):
        if server.body_fetches > 1:
            return None
        return [], "NO [UNAVAILABLE] try again later"

    user = _run(mail_partner, FolderServer(3, unavailable_once), last_uid=3)
    subjects, skips = _outcome(user)
    assert sorted(subjects) == _subjects(1, 2, 3)
    assert skips == {}


def test_a_message_seen_then_gone_across_a_reconnect_is_recorded_as_expunged(mail_partner):
    def nil_then_drop(server, uids, items):
        if server.body_fetches > 1:
            return None
        server.expunge(2)
        server.drop_on_noop = True  # the connection dies before uid 2 is re-checked
        nil = b"* 2 FETCH (UID 2 BODY[] NIL)\r\n"
        return [nil, *server.answer(uids, items, skip={2})], "OK fetched"

    user = _run(mail_partner, FolderServer(5, nil_then_drop), last_uid=5)
    subjects, skips = _outcome(user)
    assert subjects == _subjects(1, 3, 4, 5)
    assert skips == {2: "expunged"}


def test_an_unsolicited_flags_update_after_the_body_does_not_hide_it(mail_partner):
    def flags_after_body(server, uids, items):
        flags = [b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (uid, uid) for uid in uids]
        return [*server.answer(uids, items), *flags], "OK fetched"

    server = FolderServer(3, flags_after_body)
    user = _run(mail_partner, server, last_uid=3)
    subjects, skips = _outcome(user)
    assert sorted(subjects) == _subjects(1, 2, 3)
    assert skips == {}
    assert server.body_fetches == 1
