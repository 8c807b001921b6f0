"""The overview in a real browser, drawn from real mail: the chaos IMAP server, `superimap
imap-client` and `superimap worker` (processes of their own), a receiver that checks both
signatures, and `superimap web`; then the IMAP server goes away and the page says so.

OVERVIEW_PUSH_SECONDS and OVERVIEW_PUSH_RATE (default 5 s at 10/s) push more;
OVERVIEW_SCREENSHOTS=DIR saves the two screenshots the README shows (docs/screenshots/)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from selenium.webdriver.common.by import By

from devtools.bench.e2e import Receiver
from devtools.bench.engine import ChaosServerProcess
from tests.helpers.browser import blocked_by_csp, chromium, console, log_in, wait_for
from tests.helpers.processes import ROOT, wait_until, web_server

MAILBOXES = 7
RATE = float(os.environ.get("OVERVIEW_PUSH_RATE", "10"))


def _make_mailboxes(env: dict, imap_port: int, hook_port: int, api_key: str, whsec: str):
    script = (
        "from superimap.platform import prepare; prepare.setup()\n"
        "from devtools.bench.e2e import _make_mailboxes\n"
        f"_make_mailboxes({MAILBOXES}, {imap_port}, {hook_port}, {api_key!r}, {whsec!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=True, timeout=60)


def _all_idle(web: dict) -> bool:
    from tests.helpers.processes import query

    rows = query(web["env"]["DATABASE_URL"], "SELECT status FROM mailboxes_mailboxuser")
    return len(rows) == MAILBOXES and all(status == "idle" for (status,) in rows)


def _text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def test_the_overview_charts_real_mail_and_shows_an_imap_outage(tmp_path):
    from superimap.partners.models import new_api_key, new_webhook_secret

    seconds = float(os.environ.get("OVERVIEW_PUSH_SECONDS", "5"))
    pushed = int(RATE * seconds)
    shots = os.environ.get("OVERVIEW_SCREENSHOTS")
    api_key, whsec = new_api_key(), new_webhook_secret()
    server = ChaosServerProcess(tmp_path, MAILBOXES, tls=False)
    receiver = Receiver(tmp_path, api_key, whsec)
    try:
        extra = {
            "ALLOW_LOOPBACK_IMAP": "true",
            "ROLLUP_FLUSH_SECONDS": "1",
            "NUM_TRACERS": "0",
            "ENGINE_NODE_NAME": "node-a",
        }
        with web_server(tmp_path, **extra) as web, chromium(1400, 1700) as driver:
            _make_mailboxes(web["env"], server.port, receiver.port, api_key, whsec)
            engine = web["procs"].start(web["env"], "imap-client")
            worker = web["procs"].start(web["env"], "worker")
            wait_until(lambda: _all_idle(web), 60, "all mailboxes idle")

            server.send(f"push {pushed} {RATE:g}")
            assert server.read_line() == f"pushed {pushed}"
            wait_until(lambda: receiver.count() >= pushed, 60 + seconds, "every webhook received")
            time.sleep(2.5)  # a rollup flush of each process after the last one

            log_in(driver, web["base_url"], "boss", web["password"])
            wait_for(driver, "#chart-throughput-hour")
            hour = _text(driver, "#superimap-window-hour")
            assert f"{pushed} new mails" in hour, hour
            assert f"{pushed} webhooks delivered" in hour, hour
            assert "0 failed attempts" in hour
            latency = re.search(r"commit → 2xx p50/p99: ([\d.]+) / ([\d.]+) s", hour)
            assert latency and 0 < float(latency.group(1)) < 5, hour
            chart = driver.find_element(By.CSS_SELECTOR, "#chart-throughput-hour")
            drawn = chart.find_elements(By.CSS_SELECTOR, "polyline, circle")
            assert drawn and chart.size["width"] > 300
            nodes = _text(driver, "#superimap-nodes")
            assert "engine node-a" in nodes and "alive" in nodes
            if shots:
                driver.save_screenshot(str(Path(shots) / "overview-under-load.png"))
            assert blocked_by_csp(console(driver)) == []

            # The IMAP server goes away: every mailbox backs off, one banner names the host.
            server.stop()

            def banner():
                driver.get(f"{web['base_url']}/admin/")
                found = driver.find_elements(By.CSS_SELECTOR, ".superimap-host-banner")
                return found[0].text if found else ""

            text = wait_until(banner, 60, "the IMAP host banner")
            assert f"IMAP host 127.0.0.1: {MAILBOXES} of {MAILBOXES} mailboxes failing" in text
            assert "most common error" in text
            if shots:
                driver.save_screenshot(str(Path(shots) / "overview-imap-outage.png"))
            driver.find_element(By.CSS_SELECTOR, ".superimap-host-banner a").click()
            wait_for(driver, "#result_list")
            rows = driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
            assert len(rows) == MAILBOXES
            for proc in (engine, worker):
                web["procs"].stop(proc)
    finally:
        receiver.stop()
        server.stop()
