"""user_connected with real processes: the engine (`imap-client`, killed with -9 twice) and
the webhook worker against a real Dovecot and a real webhook receiver. The state lives in
the user's row, so the event is neither lost nor sent twice across the kills."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import close_old_connections

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from tests.helpers.api import ApiClient
from tests.helpers.delivery import ThreadedReceiver
from tests.helpers.engine import loopback_connection
from tests.helpers.processes import Processes, superimap_env, wait_until

KINDS = ("new_mail", "user_connected", "user_error", "user_recovered")


def _received(receiver: ThreadedReceiver) -> list[str]:
    return [event.json["event"] for event in receiver.received]


def _status(tag: str) -> str:
    close_old_connections()
    return MailboxUser.objects.get(tag=tag).status


def _put(partner, tag: str, body: dict) -> None:
    close_old_connections()
    r = ApiClient(partner.api_key).put(f"/connections/LOOPBACK_PLAIN/users/{tag}", body)
    assert r.status_code == 200, r.content


@pytest.mark.slow
def test_user_connected_survives_kill_9_once_and_only_after_the_login_succeeds(
    mail_partner, dovecot, tmp_path: Path
):
    receiver = ThreadedReceiver()
    for kind in KINDS:
        setattr(mail_partner, f"{kind}_webhook", f"{receiver.url}/{kind}")
    mail_partner.save()
    loopback_connection(mail_partner, dovecot.imap_port)
    tag = f"killed-{int(time.time() * 1000) % 100000}"
    dovecot.add_user(tag, "right-pw")
    env = superimap_env(
        f"sqlite:///{settings.DATABASES['default']['NAME']}",
        Path(settings.VAR_DIR),
        ALLOW_LOOPBACK_IMAP="true",
        ENGINE_LEASE_SECONDS="2",
        ENGINE_REFRESH_SECONDS="1",
        ENGINE_NODE_ALIVE_SECONDS="3",
        WEBHOOK_POLL_MS="200",
        # Its own node name: tests running beside it start engines with the same VAR_DIR.
        ENGINE_NODE_NAME=f"user-connected-{os.getpid()}",
    )
    body = {"tag": tag, "email": f"{tag}@example.test", "login_username": tag}
    r = ApiClient(mail_partner.api_key).post(
        "/connections/LOOPBACK_PLAIN/users", {**body, "password": "wrong"}
    )
    assert r.status_code == 201, r.content

    def deliver(subject: str) -> None:
        dovecot.deliver(tag, make_message(subject, "a@example.test", f"{tag}@example.test", "x"))

    try:
        with Processes(tmp_path) as procs:
            procs.start(env, "worker")
            engine = procs.start(env, "imap-client")
            wait_until(lambda: "user_error" in _received(receiver), 30, "user_error")
            refused = _received(receiver)
            engine.send_signal(signal.SIGKILL)
            engine.wait(10)
            # New credentials while no engine runs: owed in the row, not in a process.
            _put(mail_partner, tag, {"password": "right-pw"})
            engine = procs.start(env, "imap-client")
            wait_until(lambda: "user_connected" in _received(receiver), 30, "user_connected")
            wait_until(lambda: _status(tag) == "idle", 30, "idle")
            deliver("first")
            wait_until(lambda: "new_mail" in _received(receiver), 30, "the first new_mail")
            engine.send_signal(signal.SIGKILL)
            engine.wait(10)
            engine = procs.start(env, "imap-client")
            deliver("second")  # seen only once the restarted engine logged in again
            wait_until(lambda: _received(receiver).count("new_mail") == 2, 30, "new_mail 2")
            time.sleep(1.5)  # a second user_connected would arrive now
            outputs = [procs.output(p) for p, _ in procs.started]
    finally:
        received = list(receiver.received)
        receiver.close()
    kinds = [event.json["event"] for event in received]
    assert refused == ["user_error"], outputs
    assert kinds.count("user_connected") == 1, kinds
    assert kinds.index("user_connected") < kinds.index("new_mail")
    connected = next(e for e in received if e.json["event"] == "user_connected")
    assert connected.path == "/user_connected"
    assert connected.json["user_tag"] == tag and connected.json["email"] == f"{tag}@example.test"
    error = next(e for e in received if e.json["event"] == "user_error")
    assert error.json["status"] == "auth_failed"
    assert "right-pw" not in json.dumps([e.json for e in received])
    close_old_connections()
    assert Delivery.objects.filter(kind="user_connected").count() == 1
