"""Pages looked at as a user does: Debian's Chromium, headless, driven by Selenium through
Debian's chromedriver (packages chromium and chromium-driver, installed by
scripts/install-system-deps.sh). Nothing is downloaded: the driver's path is given, so
Selenium Manager never runs.

`chromium()` opens a browser; `web_server()` (in tests/helpers/processes.py) runs a real
`superimap web` for it to load. Console messages are kept, so a test can assert that the
page's own CSP blocked nothing (`blocked_by_csp`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")

# What the probe of this kind of machine used: no sandbox (root), no GPU, and none of
# Chromium's own background traffic (the network is closed; each try would be refused).
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
)


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[WebDriver]:
    """A headless Chromium window of ``width`` x ``height`` CSS pixels, closed at the end."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: WebDriver, css: str, timeout: float = 15):
    """The first element matching ``css`` once it is visible."""
    return WebDriverWait(driver, timeout).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css))
    )


def submit(driver: WebDriver, button) -> None:
    """Click a form's submit ``button`` and wait until the next page replaced this one (an
    element looked up before that could still belong to the old page)."""
    page = driver.find_element(By.TAG_NAME, "html")
    button.click()
    WebDriverWait(driver, 15).until(lambda _driver: _replaced(page))


def _replaced(element) -> bool:
    """expected_conditions.staleness_of, plus chromedriver's other answer for an element of a
    page being replaced: asked mid-navigation, it can say "Node with given id does not belong
    to the document" (an unknown error, not a stale element; a fresh-clone CI run)."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def log_in(driver: WebDriver, base_url: str, username: str, password: str) -> None:
    """Through the dashboard's login form, as a person would; fails if it does not land."""
    driver.get(f"{base_url}/admin/login/?next=/admin/")
    wait_for(driver, "#id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(password)
    submit(driver, driver.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]"))
    WebDriverWait(driver, 15).until(lambda d: "/admin/login/" not in d.current_url)


def console(driver: WebDriver) -> list[str]:
    """The browser console's messages since the last call."""
    return [entry["message"] for entry in driver.get_log("browser")]


def blocked_by_csp(messages: list[str]) -> list[str]:
    """The console messages that say the Content-Security-Policy refused something."""
    return [m for m in messages if "Content Security Policy" in m or "Content-Security-Policy" in m]
