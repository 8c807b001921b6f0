"""Per-user order as a partner receives it (issue 16 item 1), with real processes: the chaos
IMAP server, `superimap imap-client`, `superimap worker` and `superimap web`, and a real
HTTP receiver; SQLite and PostgreSQL.

Mail arrives every 50 ms for three users; one of them disconnects through the hosted page
mid-stream. The receiver answers some of that user's mail with a 503 (retried a second
later) and the rest slowly, so at the disconnect some of its mail is in flight and some in
back-off. Before the fix the partner received those after user_disconnected."""

from __future__ import annotations

import http.cookiejar
import re
import threading
import time
import urllib.parse
import urllib.request

import pytest

from devtools.testing import free_port
from devtools.testing.webhook_receiver import Hang
from tests.helpers.delivery import ThreadedReceiver
from tests.helpers.engine import ServerThread
from tests.helpers.processes import BASELINED, Processes, query, run_cli, superimap_env, wait_until

USERS = 3
LEAVER = "user0"
MAIL_EVERY = 0.05
FINAL = ("delivered", "failed", "skipped", "cancelled")

SETUP_SCRIPT = """
import os
from django.utils import timezone
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner

hook = os.environ["HOOK_URL"]
partner = Partner.objects.create(
    name="order", new_mail_webhook=f"{hook}/new-mail",
    user_disconnected_webhook=f"{hook}/disconnected")
connection = Connection.objects.create(
    partner=partner, provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
    imap_host="127.0.0.1", imap_port=int(os.environ["CHAOS_PORT"]), imap_tls="none")
for i in range(int(os.environ["USERS"])):
    MailboxUser.objects.create(connection=connection, tag=f"user{i}", login_username=f"user{i}",
                               password=f"pass{i}", connected_at=timezone.now())
"""

LINK_SCRIPT = """
from superimap.mailboxes.links import make_link
from superimap.mailboxes.models import MailboxUser
print("LINK " + make_link(MailboxUser.objects.get(tag="%s").id, "disconnect"))
"""


@pytest.fixture
def database_url(migrated_database_url) -> str:
    """Migrated already (a copy of one migrated template), not by each test."""
    return migrated_database_url


def reply(event) -> Hang | tuple[int, str]:
    """The leaver's mail: every third first attempt fails (503), the rest answer after
    0.1-0.3 s; everything else at once."""
    payload = event.json
    if payload.get("event") != "new_mail" or payload.get("user_tag") != LEAVER:
        return (200, "OK")
    number = int(re.search(rb"chaos message (\d+)", event.body).group(1))
    first = payload["event_id"] not in reply.seen
    reply.seen.add(payload["event_id"])
    if first and number % 3 == 0:
        return (503, "busy")
    return Hang(0.1 + (number % 3) * 0.1)


def disconnect_through_the_hosted_page(link: str) -> int:
    """What the user's browser does: open the confirmation page, post its form."""
    cookies = urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    browser = urllib.request.build_opener(cookies)
    page = browser.open(link, timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token}).encode()
    return browser.open(urllib.request.Request(link, data=form), timeout=10).status


def test_nothing_of_a_user_arrives_after_its_user_disconnected(database_url, tmp_path):
    reply.seen = set()
    receiver = ThreadedReceiver(responses=reply)
    try:
        with ServerThread(USERS) as chaos, Processes(tmp_path) as procs:
            outcome = _run(database_url, tmp_path, chaos, procs, receiver)
    finally:
        receiver.close()
    received, rows, folders, skips, outputs = outcome
    leaver = [e for e in received if e.json.get("user_tag") == LEAVER]
    kinds = [e.json["event"] for e in leaver]
    assert "user_disconnected" in kinds, outputs
    gone = kinds.index("user_disconnected")
    disconnected_at = leaver[gone].received_at
    late = [
        e.json["event_id"] for e in leaver[gone + 1 :] if e.json["event"] != "user_disconnected"
    ]
    assert late == [], f"received after user_disconnected: {late}"
    # Every earlier attempt of that user was answered (final or back in the queue) before
    # user_disconnected was sent: nothing of it was in flight.
    assert all(e.answered_at < disconnected_at for e in leaver[:gone])
    retried = {e.json["event_id"] for e in leaver[:gone] if e.reply == (503, "busy")}
    assert retried, "no mail of the leaver was in back-off: the scenario tested nothing"

    for tag in (f"user{i}" for i in range(USERS)):
        mail = {event_id: status for event_id, kind, status, user in rows if user == tag}
        delivered = {event_id for event_id, status in mail.items() if status == "delivered"}
        got = {
            e.json["event_id"]
            for e in received
            if e.json.get("user_tag") == tag and e.json["event"] == "new_mail"
        }
        assert set(mail.values()) <= {"delivered"}, (tag, mail)
        assert got == delivered, tag
        # Count identity: every message that reached the folder while the user was watched
        # is a delivery or a recorded skip.
        if tag == LEAVER:
            assert len(mail) + skips[tag] <= folders[tag]
        else:
            assert len(mail) + skips[tag] == folders[tag], (tag, len(mail), skips[tag])
    print(
        f"{database_url[:10]}: leaver {kinds.count('new_mail')} mail posts, "
        f"{len(retried)} retried, disconnected after {gone} of {len(leaver)}"
    )


def _run(database_url, tmp_path, chaos, procs, receiver):
    server = chaos.server
    port = free_port()
    env = superimap_env(
        database_url,
        tmp_path / "var",
        ALLOW_LOOPBACK_IMAP="true",
        ENGINE_NODE_NAME="order-node",
        WEBHOOK_RETRY_SCHEDULE="1,1,1,1,1,1",
        PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    setup = {**env, "CHAOS_PORT": str(server.port), "USERS": str(USERS), "HOOK_URL": receiver.url}
    run_cli(setup, "manage", "shell", "-c", SETUP_SCRIPT)
    link = run_cli(env, "manage", "shell", "-c", LINK_SCRIPT % LEAVER).split("LINK ", 1)[1]

    worker = procs.start(env, "worker")
    engine = procs.start(env, "imap-client")
    web = procs.start(env, "web", "--port", str(port))
    wait_until(lambda: query(database_url, BASELINED)[0][0] == USERS, 30, "every mailbox baselined")
    before = {f"user{i}": len(chaos.call(server.messages_of, f"user{i}")) for i in range(USERS)}

    stop = threading.Event()

    def stream() -> None:
        tick = 0
        while not stop.is_set():
            chaos.call(server.generate_message, LEAVER)
            chaos.call(server.generate_message, f"user{1 + tick % (USERS - 1)}")
            tick += 1
            time.sleep(MAIL_EVERY)

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    try:
        wait_until(
            lambda: sum(e.json.get("user_tag") == LEAVER for e in receiver.received) >= 15,
            30,
            "the leaver's mail to arrive",
        )
        wait_until(lambda: _up(port), 30, "the web process")
        assert disconnect_through_the_hosted_page(link.strip()) == 200
        time.sleep(2.0)  # mail keeps arriving for everyone
    finally:
        stop.set()
        sender.join(10)
    after = {f"user{i}": len(chaos.call(server.messages_of, f"user{i}")) for i in range(USERS)}
    folders = {tag: after[tag] - before[tag] for tag in after}

    def settled() -> bool:
        pending = query(
            database_url, "SELECT count(*) FROM delivery_delivery WHERE status = 'pending'"
        )
        persisted = query(
            database_url,
            "SELECT count(*) FROM mailboxes_maillog l JOIN mailboxes_mailboxuser u "
            "ON u.id = l.user_id WHERE u.tag <> 'user0'",
        )
        others = sum(folders[tag] for tag in folders if tag != LEAVER)
        return pending[0][0] == 0 and persisted[0][0] == others

    wait_until(settled, 60, "every delivery final and every message persisted")
    outputs = [procs.stop(engine), procs.stop(worker), procs.stop(web)]
    rows = query(
        database_url,
        "SELECT d.event_id, d.kind, d.status, u.tag FROM delivery_delivery d "
        "JOIN mailboxes_mailboxuser u ON u.id = d.user_id WHERE d.kind = 'new_mail'",
    )
    rows = [(_uuid(event_id), kind, status, tag) for event_id, kind, status, tag in rows]
    skips = dict(
        query(
            database_url,
            "SELECT u.tag, count(l.id) FROM mailboxes_mailboxuser u LEFT JOIN mailboxes_maillog l "
            "ON l.user_id = u.id AND l.skipped_reason <> '' GROUP BY u.tag",
        )
    )
    return receiver.received, rows, folders, skips, outputs


def _uuid(value) -> str:
    import uuid

    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def _up(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
    except OSError:
        return False
