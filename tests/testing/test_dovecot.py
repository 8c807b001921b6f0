"""The private Dovecot fixture works with a plain stdlib IMAP client."""

from __future__ import annotations

import email.policy
import imaplib
import ssl
import time
from collections.abc import Iterator
from email import message_from_bytes

import pytest

from devtools.testing.dovecot import DovecotServer
from devtools.testing.mail import make_message


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotServer]:
    with DovecotServer() as server:
        yield server


def tls_context(server: DovecotServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.cert_path))


def message(subject: str) -> bytes:
    return make_message(subject, "Sender <sender@example.com>", "user@example.com", "Hello.\n")


def read_until(client: imaplib.IMAP4, marker: bytes, timeout: float = 5.0) -> list[bytes]:
    """Read untagged lines (e.g. during IDLE) until one contains ``marker``."""
    client.sock.settimeout(timeout)
    lines = []
    while True:
        line = client.readline()
        if not line:
            raise AssertionError(f"connection closed before {marker!r}; got {lines}")
        lines.append(line)
        if marker in line:
            return lines


def test_it_logs_in_over_implicit_tls(dovecot: DovecotServer) -> None:
    dovecot.add_user("tls-user", "s3cret")
    client = imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=tls_context(dovecot))
    assert client.login("tls-user", "s3cret")[0] == "OK"
    client.logout()


def test_it_allows_starttls_and_plain_login(dovecot: DovecotServer) -> None:
    dovecot.add_user("plain-user", "pw")
    client = imaplib.IMAP4("localhost", dovecot.imap_port)
    assert client.starttls(ssl_context=tls_context(dovecot))[0] == "OK"
    client.logout()

    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    assert client.login("plain-user", "pw")[0] == "OK"
    client.logout()


def test_it_rejects_a_wrong_password(dovecot: DovecotServer) -> None:
    dovecot.add_user("careful", "right")
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    with pytest.raises(imaplib.IMAP4.error):
        client.login("careful", "wrong")
    client.shutdown()


def test_it_delivers_a_message(dovecot: DovecotServer) -> None:
    dovecot.add_user("reader", "pw")
    dovecot.deliver("reader", message("Über uns"))
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login("reader", "pw")
    assert client.select("INBOX", readonly=True) == ("OK", [b"1"])
    status, data = client.uid("FETCH", "1", "(BODY.PEEK[])")
    assert status == "OK"
    parsed = message_from_bytes(data[0][1], policy=email.policy.default)
    assert parsed["Subject"] == "Über uns"
    client.logout()
    assert dovecot.message_flags("reader") == [set()]


def test_it_delivers_to_other_mailboxes(dovecot: DovecotServer) -> None:
    dovecot.add_user("sorter", "pw")
    dovecot.create_mailbox("sorter", "Archive")
    dovecot.deliver("sorter", message("archived"), mailbox="Archive")
    assert dovecot.message_flags("sorter", "Archive") == [set()]
    assert dovecot.message_flags("sorter") == []


def test_idle_clients_see_new_mail_promptly(dovecot: DovecotServer) -> None:
    dovecot.add_user("idler", "pw")
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login("idler", "pw")
    client.select("INBOX")
    client.send(b"I1 IDLE\r\n")
    read_until(client, b"+ ")

    started = time.monotonic()
    dovecot.deliver("idler", message("wake up"))
    assert read_until(client, b"EXISTS")[-1] == b"* 1 EXISTS\r\n"
    # Not a timing assertion on the product, just a guard that notifications are pushed
    # (Dovecot batches them for ~0.5 s) rather than found by the 30 s fallback poll.
    assert time.monotonic() - started < 5

    client.send(b"DONE\r\n")
    assert read_until(client, b"I1 ")[-1].startswith(b"I1 OK")
    client.logout()


def test_message_flags_show_seen_only_after_a_real_read(dovecot: DovecotServer) -> None:
    dovecot.add_user("flagged", "pw")
    dovecot.deliver("flagged", message("first"))
    dovecot.deliver("flagged", message("second"))
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login("flagged", "pw")
    client.select("INBOX")
    client.uid("FETCH", "1:*", "(BODY.PEEK[])")
    assert dovecot.message_flags("flagged") == [set(), set()]
    client.uid("FETCH", "2", "(BODY[])")
    client.logout()
    assert dovecot.message_flags("flagged") == [set(), {"\\Seen"}]


def idle_client(server: DovecotServer, username: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4(server.host, server.imap_port)
    client.login(username, "pw")
    client.select("INBOX")
    client.send(b"I1 IDLE\r\n")
    read_until(client, b"+ ")
    return client


def test_recreate_mailbox_changes_uidvalidity_and_keeps_messages(
    dovecot: DovecotServer,
) -> None:
    dovecot.add_user("moved", "pw")
    dovecot.deliver("moved", message("kept"))
    before = dovecot.uidvalidity("moved")
    watcher = idle_client(dovecot, "moved")

    after = dovecot.recreate_mailbox("moved")

    assert after != before
    assert dovecot.uidvalidity("moved") == after
    assert read_until(watcher, b"BYE")[-1] == b"* BYE Server shutting down.\r\n"
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login("moved", "pw")
    assert client.select("INBOX")[1] == [b"1"]
    assert client.response("UIDVALIDITY")[1] == [str(after).encode()]
    client.logout()
    assert dovecot.message_flags("moved") == [set()]


def test_recreate_mailbox_without_disconnect_fails_the_next_command(
    dovecot: DovecotServer,
) -> None:
    dovecot.add_user("stale", "pw")
    dovecot.deliver("stale", message("kept"))
    watcher = idle_client(dovecot, "stale")

    dovecot.recreate_mailbox("stale", disconnect=False)
    watcher.send(b"DONE\r\n")
    read_until(watcher, b"I1 OK")
    watcher.send(b"N1 NOOP\r\n")

    assert read_until(watcher, b"BYE")[-1].startswith(b"* BYE IMAP session state is inconsistent")


def test_stop_removes_everything() -> None:
    server = DovecotServer()
    server.start()
    root = server.root
    assert root is not None and root.exists()
    server.stop()
    assert not root.exists()


def test_make_message_uses_crlf_and_unique_message_ids() -> None:
    first = make_message("a", "x@example.com", "y@example.com", "line 1\nline 2\n")
    second = make_message(
        "a", "x@example.com", "y@example.com", "body", extra_headers={"X-Test": "1"}
    )
    assert b"\r\nline 1\r\nline 2\r\n" in first
    assert b"\n" not in first.replace(b"\r\n", b"")
    ids = [message_from_bytes(raw)["Message-ID"] for raw in (first, second)]
    assert ids[0] != ids[1]
    assert message_from_bytes(second)["X-Test"] == "1"
    given = make_message("a", "x@example.com", "y@example.com", "b", message_id="<id@test>")
    assert message_from_bytes(given)["Message-ID"] == "<id@test>"
