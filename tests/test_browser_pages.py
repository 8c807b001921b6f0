"""Every kind of page that loads a script, in a real browser (Debian's Chromium): each
loads what it asks for from this origin and the page's own CSP (superimap.platform.security) blocks
nothing. The README: "The OpenAPI schema is at `/api/v1/openapi.json`, with interactive
docs at `/api/v1/docs`."."""

from __future__ import annotations

import json
import re
import urllib.request
from urllib.parse import urlsplit

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

from devtools.testing import free_port
from tests.helpers.browser import blocked_by_csp, chromium, console, log_in, submit, wait_for
from tests.helpers.processes import ROOT, run_cli, web_server

README = (ROOT / "README.md").read_text()


def api(web: dict, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{web['base_url']}/api/v1{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"x-api-key": web["api_key"], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def a_user(web: dict, **fields) -> dict:
    """A loopback connection and a user on it, created through the API."""
    api(
        web,
        "POST",
        "/connections",
        {
            "imap_provider_code": "LOOPBACK_PLAIN",
            "imap_host": "127.0.0.1",
            "imap_port": free_port(),
            "imap_tls": "none",
        },
    )
    return api(web, "POST", "/connections/LOOPBACK_PLAIN/users", {"tag": "alice", **fields})


def local(web: dict, url: str) -> str:
    """A link the API made (on PUBLIC_URL), on the test server."""
    parts = urlsplit(url)
    return (
        f"{web['base_url']}{parts.path}?{parts.query}"
        if parts.query
        else (f"{web['base_url']}{parts.path}")
    )


def test_the_api_docs_list_the_operations_with_nothing_blocked(tmp_path):
    with web_server(tmp_path) as web, chromium() as driver:
        docs = re.search(r"interactive docs at `(/[^`]+)`", README).group(1)
        driver.get(f"{web['base_url']}{docs}")
        block = wait_for(driver, '.opblock-summary-path[data-path="/api/v1/connections"]')
        assert block.is_displayed()
        paths = {
            e.get_attribute("data-path")
            for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
        }
        assert "/api/v1/deliveries" in paths
        assert blocked_by_csp(console(driver)) == []


def test_the_dashboards_list_and_edit_pages_load_their_scripts(tmp_path):
    with web_server(tmp_path) as web, chromium() as driver:
        log_in(driver, web["base_url"], "boss", web["password"])
        console(driver)
        driver.get(f"{web['base_url']}/admin/partners/partner/")
        wait_for(driver, "#result_list")
        scripts = [e.get_attribute("src") for e in driver.find_elements(By.TAG_NAME, "script")]
        assert scripts and all(s.startswith(web["base_url"]) for s in scripts if s)
        driver.get(driver.find_element(By.CSS_SELECTOR, "#result_list th a").get_attribute("href"))
        wait_for(driver, "#content-main form")
        assert blocked_by_csp(console(driver)) == []


def test_the_hosted_connect_and_disconnect_pages_block_nothing(tmp_path):
    with web_server(tmp_path) as web, chromium() as driver:
        user = a_user(web, login_username="alice.login", email="alice@example.com")
        driver.get(local(web, user["connect_url"]))
        wait_for(driver, "form button[type=submit]")
        driver.get(local(web, user["disconnect_url"]))
        wait_for(driver, "form button[type=submit]")
        assert blocked_by_csp(console(driver)) == []


def test_the_hosted_form_prefills_the_login_and_names_the_provider_for_people(tmp_path):
    with web_server(tmp_path) as web, chromium() as driver:
        user = a_user(web, login_username="alice.login", email="alice@example.com")
        driver.get(local(web, user["connect_url"]))
        assert wait_for(driver, "#id_login_username").get_attribute("value") == "alice.login"
        assert driver.find_element(By.ID, "id_email").get_attribute("value") == (
            "alice@example.com"
        )
        text = driver.find_element(By.TAG_NAME, "main").text
        assert "ALLOW_LOOPBACK_IMAP" not in text
        assert "your inbox on 127.0.0.1" in text


def test_the_lockout_page_says_how_long_and_how_to_unlock_and_the_command_works(tmp_path):
    with web_server(tmp_path) as web, chromium() as driver:
        # Three wrong passwords lock the account. Chromium now and then loses a node of the
        # login page it just loaded ("does not belong to the document"): such a try is made
        # again (a fourth failure would show the same page).
        failures = 0
        for _try in range(10):
            if failures == 3:
                break
            try:
                driver.get(f"{web['base_url']}/admin/login/")
                wait_for(driver, "#id_username").send_keys("boss")
                driver.find_element(By.ID, "id_password").send_keys("not-the-password")
                submit(driver, driver.find_element(By.CSS_SELECTOR, "input[type=submit]"))
            except WebDriverException:
                continue
            failures += 1
        assert failures == 3
        text = wait_for(driver, "#content").text
        assert "1 hour" in text
        assert "superimap manage axes_reset_username boss" in text
        assert blocked_by_csp(console(driver)) == []

        run_cli(web["env"], "manage", "axes_reset_username", "boss")
        log_in(driver, web["base_url"], "boss", web["password"])
        assert driver.current_url.rstrip("/").endswith("/admin")
