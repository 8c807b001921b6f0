"""The dashboard in a real browser (Debian's Chromium, headless): an operator logs in
through the form and lands on the dashboard, and the page's own CSP blocks none of what the
page loads."""

from __future__ import annotations

from selenium.webdriver.common.by import By

from tests.helpers.browser import blocked_by_csp, chromium, console, log_in, submit, wait_for
from tests.helpers.processes import web_server


def test_an_operator_logs_in_and_the_dashboard_loads_everything_it_asks_for(tmp_path):
    with web_server(tmp_path) as web, chromium() as driver:
        log_in(driver, web["base_url"], "boss", web["password"])
        assert driver.current_url.rstrip("/").endswith("/admin")
        wait_for(driver, "#content")
        links = {a.text for a in driver.find_elements(By.CSS_SELECTOR, "#content a")}
        assert "Partners" in links
        assert blocked_by_csp(console(driver)) == []


def test_a_wrong_password_stays_on_the_login_page_with_the_reason(tmp_path):
    with web_server(tmp_path) as web, chromium() as driver:
        driver.get(f"{web['base_url']}/admin/login/")
        wait_for(driver, "#id_username").send_keys("boss")
        driver.find_element(By.ID, "id_password").send_keys("not-the-password")
        submit(driver, driver.find_element(By.CSS_SELECTOR, "input[type=submit]"))
        error = wait_for(driver, ".errornote")
        assert "correct username and password" in error.text
        assert "/admin/login/" in driver.current_url
