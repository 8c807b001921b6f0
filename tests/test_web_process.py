"""The front door of a real `superimap web` process (uvicorn): bodies of callers without
a key are cut off at a small bound, oversized ones at the limit, the original's clients
(previous key in its grace period, `api_key` in a form body) get through, and
X-Forwarded-For from an untrusted client does not reset the login lockout."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
import urllib.parse

import pytest

from tests.helpers.api import REST_CLIENT_REQUESTS
from tests.helpers.processes import web_server

CHUNK = b"x" * 65536


@pytest.fixture
def web(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    with web_server(tmp_path, TMPDIR=str(spool)) as running:
        yield {**running, "spool": spool}


def chunked_post(port: int, path: str, headers: dict, total: int) -> tuple[int, int, bytes]:
    """POST a chunked body of `total` bytes, reading the answer as soon as one comes.
    Returns (status, bytes sent before the answer, body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    sock.setblocking(False)
    sent, answer = 0, b""
    deadline = time.monotonic() + 30
    while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
        try:
            answer += sock.recv(65536)
            continue
        except BlockingIOError:
            pass
        if sent < total:
            try:
                sock.send(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
                sent += len(CHUNK)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                time.sleep(0.01)  # the server closed: read its answer
        else:
            time.sleep(0.01)
    sock.setblocking(True)
    sock.settimeout(5)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except OSError:
        pass
    sock.close()
    assert answer, "no answer"
    status = int(answer.split(b" ", 2)[1])
    return status, sent, answer.split(b"\r\n\r\n", 1)[1]


def test_a_large_body_without_a_key_is_cut_off_at_the_keyless_bound(web):
    status, sent, body = chunked_post(
        web["port"], "/api/v1/connections", {"Content-Type": "application/json"}, 64 << 20
    )
    assert status == 401
    assert b'"unauthorized"' in body
    assert sent < 64 << 20
    assert list(web["spool"].iterdir()) == []


def test_an_oversized_chunked_body_gets_413_at_the_limit_not_a_traceback(web):
    status, sent, body = chunked_post(
        web["port"],
        "/api/v1/connections",
        {"Content-Type": "application/json", "x-api-key": web["api_key"]},
        64 << 20,
    )
    assert status == 413
    assert b'"payload_too_large"' in body
    assert sent < 64 << 20
    assert list(web["spool"].iterdir()) == []
    assert "Traceback" not in web["output"]()


def raw_request(port: int, request: str) -> tuple[int, bytes]:
    """Send a request exactly as written (as a captured client sent it); (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.connect()
    conn.sock.sendall(request.encode())
    response = http.client.HTTPResponse(conn.sock, method=request.split(" ", 1)[0])
    response.begin()
    body = response.read()
    conn.close()
    return response.status, body


def test_the_original_readme_snippet_works_with_the_previous_key_in_grace(web):
    port, old_key = web["port"], web["api_key"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/api/v1/partner/rotate-api-key", "{}", {"x-api-key": old_key})
    rotated = conn.getresponse()
    assert rotated.status == 200
    new_key = json.loads(rotated.read())["api_key"]
    assert new_key != old_key
    # The owner (new key) sets the connection up; the original's user calls keep working
    # with the previous key in its grace period, settings routes do not (issue 15).
    snippet = REST_CLIENT_REQUESTS["create_connection"]
    status, body = raw_request(port, snippet.replace("$API_KEY$", new_key))
    assert status == 201, body
    status, body = raw_request(
        port, REST_CLIENT_REQUESTS["create_user"].replace("$API_KEY$", old_key)
    )
    assert status == 201, body
    status, body = raw_request(port, REST_CLIENT_REQUESTS["get_user"].replace("$API_KEY$", old_key))
    assert status == 200, body
    status, body = raw_request(port, snippet.replace("$API_KEY$", old_key))
    assert status == 403 and json.loads(body)["error"]["code"] == "key_in_grace", body


def test_the_original_readme_snippet_works_with_the_key_in_its_form_body(web):
    raw = REST_CLIENT_REQUESTS["create_connection"].replace("X-Api-Key: $API_KEY$\r\n", "")
    head, _, form = raw.partition("\r\n\r\n")
    form += f"&api_key={web['api_key']}"
    head = head.replace("Content-Length: 74", f"Content-Length: {len(form)}")
    status, body = raw_request(web["port"], f"{head}\r\n\r\n{form}")
    assert status == 201, body
    assert list(web["spool"].iterdir()) == []


def login(port: int, password: str, forwarded_for: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/admin/login/")
    page = conn.getresponse()
    html = page.read().decode()
    cookie = re.search(r"csrftoken=([^;]+)", page.getheader("Set-Cookie")).group(1)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    form = urllib.parse.urlencode(
        {"username": "boss", "password": password, "csrfmiddlewaretoken": token}
    )
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": f"csrftoken={cookie}",
    }
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    conn.request("POST", "/admin/login/?next=/admin/", form, headers)
    response = conn.getresponse()
    response.read()
    return response.status


def test_x_forwarded_for_from_an_untrusted_client_does_not_reset_the_lockout(web):
    statuses = [login(web["port"], "wrong password") for _ in range(3)]
    assert statuses == [200, 200, 429]  # the form again with an error, then the lockout
    assert login(web["port"], web["password"]) == 429
    # Posing as another address (uvicorn's default trusts it from 127.0.0.1) gets nowhere.
    assert login(web["port"], web["password"], forwarded_for="203.0.113.9") == 429
