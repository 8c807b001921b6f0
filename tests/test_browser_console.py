"""The operator console in a real browser (Debian's Chromium, headless) against real
processes: `superimap web`, an `imap-client` engine and the chaos IMAP server. An operator
logs in, sees why a mailbox fails in the list, fixes it and reconnects it from the list
(the engine logs in again within seconds, though its back-off was minutes), replays a
delivery, and the lists fit 1,400 px without horizontal scrolling."""

from __future__ import annotations

import sqlite3
import time

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.helpers.browser import chromium, log_in, submit, wait_for
from tests.helpers.engine import ServerThread
from tests.helpers.processes import CHAOS_USERS_SCRIPT, run_cli, web_server

MAILBOXES = "/admin/mailboxes/mailboxuser/"
DELIVERIES = "/admin/delivery/delivery/"

FAILED_DELIVERY_SCRIPT = """
from django.utils import timezone
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
user = MailboxUser.objects.get(tag="user0")
Delivery.objects.create(
    event_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", kind="user_error",
    partner=user.connection.partner, user=user, payload={"event": "user_error"},
    status="failed", attempts=6, max_attempts=6,
    last_error="connection refused by 127.0.0.1:9 (nothing listening?)",
    next_attempt_at=timezone.now())
"""


def text_of_page(driver, path: str, base_url: str) -> str:
    driver.get(base_url + path)
    return wait_for(driver, "#content").text


def wait_page_says(driver, base_url: str, path: str, words: str, timeout: float) -> float:
    """Reload ``path`` until its content shows ``words``; the seconds it took."""
    started = time.monotonic()
    while True:
        text = text_of_page(driver, path, base_url)
        if words in text:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{words!r} not on {path}:\n{text}"
        time.sleep(0.5)


def assert_fits(driver) -> None:
    """No horizontal scrolling: neither the page nor the list's own box."""
    page = driver.execute_script(
        "return [document.scrollingElement.scrollWidth, window.innerWidth]"
    )
    assert page[0] <= page[1], page
    results = driver.execute_script(
        "const r = document.querySelector('#changelist .results');"
        "return r ? [r.scrollWidth, r.clientWidth] : [0, 0]"
    )
    assert results[0] <= results[1], results


def run_action(driver, action: str, row_value: str) -> str:
    """Tick one row, pick an action, Go; the message the dashboard answers with."""
    box = driver.find_element(By.CSS_SELECTOR, f"input.action-select[value='{row_value}']")
    box.click()
    Select(driver.find_element(By.NAME, "action")).select_by_value(action)
    submit(driver, driver.find_element(By.CSS_SELECTOR, "button[name=index]"))
    return wait_for(driver, "ul.messagelist").text


def test_an_operator_sees_why_a_mailbox_fails_reconnects_it_and_replays(tmp_path):
    # No user on the chaos server yet: every login is refused until it is "fixed".
    with (
        ServerThread(0) as chaos,
        web_server(tmp_path, ALLOW_LOOPBACK_IMAP="true", ENGINE_NODE_NAME="box-1") as web,
        chromium(width=1400) as driver,
    ):
        env, base = web["env"], web["base_url"]
        setup = {**env, "CHAOS_PORT": str(chaos.server.port), "USERS": "1"}
        run_cli(setup, "manage", "shell", "-c", CHAOS_USERS_SCRIPT)
        run_cli(env, "manage", "shell", "-c", FAILED_DELIVERY_SCRIPT)
        web["procs"].start(env, "imap-client")
        log_in(driver, base, "boss", web["password"])

        # The reason is in the list, with the node and the folders.
        wait_page_says(driver, base, MAILBOXES, "login refused", 30)
        text = text_of_page(driver, MAILBOXES, base)
        assert "Authentication failed" in text and "box-1" in text and "INBOX" in text
        assert_fits(driver)

        # Fixed on the server; the engine would wait 4 minutes or more: reconnect now.
        chaos.call(setattr, chaos.server, "users", 1)
        user_id = (
            sqlite3.connect(tmp_path / "db.sqlite3")
            .execute("SELECT id FROM mailboxes_mailboxuser WHERE tag = 'user0'")
            .fetchone()[0]
        )
        message = run_action(driver, "reconnect_now", str(user_id))
        assert "Reconnect requested for 1 mailbox(es)." in message
        took = wait_page_says(driver, base, MAILBOXES, "Idle", 20)
        assert took < 20
        assert chaos.server.stats["login_failures"] == 1  # no retry came before the click

        # Deliveries: the short id, the reason in words; replay from the list.
        text = text_of_page(driver, DELIVERIES, base)
        assert "0f1e2d3c" in text and "0f1e2d3c-4b5a" not in text
        assert "connection refused by 127.0.0.1:9 (nothing listening?)" in text
        assert_fits(driver)
        delivery_id = (
            sqlite3.connect(tmp_path / "db.sqlite3")
            .execute("SELECT id FROM delivery_delivery WHERE kind = 'user_error' AND attempts = 6")
            .fetchone()[0]
        )
        message = run_action(driver, "replay", str(delivery_id))
        assert "1 delivery(ies) queued to be sent again." in message
        status = (
            sqlite3.connect(tmp_path / "db.sqlite3")
            .execute("SELECT status FROM delivery_delivery WHERE id = ?", (delivery_id,))
            .fetchone()[0]
        )
        assert status == "pending"
