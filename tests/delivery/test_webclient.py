"""delivery/webclient.py on real sockets: keep-alive reuse, receivers that close, chunked
and HTTP/1.0 answers, 1xx, timeouts, TLS with a test CA, the concurrency bound, refusal of
private targets at connect. Each receiver here is a small asyncio server scripted per test
(the answers the shared WebhookReceiver would never give)."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time

import pytest
import uvloop

from devtools.testing.dovecot import write_test_certificates
from superimap.delivery import webclient
from superimap.delivery.http import USER_AGENT, make_session, post


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Each test on asyncio's loop and on uvloop (the worker's)."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


BODY = b'{"event":"new_mail"}'
HEADERS = {"Content-Type": "application/json", "webhook-id": "e1"}
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Scripted:
    """An HTTP server whose `answer(number, request)` returns the bytes to write for each
    request (None: write nothing), then `after` says what to do: "keep", "close", "hang"."""

    def __init__(self, answer, after: str = "keep", tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.after = after
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.client_closed = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, family=socket.AF_INET, ssl=self.tls
        )
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.client_closed += 1
                    return
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = await self.answer(len(self.requests), request)
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
                if self.after == "close":
                    return
                if self.after == "hang":
                    await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            self.open_now -= 1
            writer.close()


def _answers(*replies: bytes):
    async def answer(number: int, request: bytes) -> bytes:
        return replies[min(number, len(replies)) - 1]

    return answer


async def _until(condition, seconds: float = 3.0) -> None:
    """Wait until condition() holds (the other side's view of a close takes a loop turn)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _exchange(server: Scripted, count: int = 1, *, timeout=5.0, scheme="http", **kw):
    port = await server.start()
    try:
        async with make_session(4, timeout, allow_private=True, **kw) as session:
            results = []
            for _ in range(count):
                url = f"{scheme}://localhost:{port}/hook?x=1"
                results.append(await post(session, url, BODY, HEADERS))
            return port, results
    finally:
        await server.stop()


def test_posts_reuse_one_keep_alive_connection_and_send_what_aiohttp_sent(run):
    server = Scripted(_answers(OK))
    port, results = run(_exchange(server, 3))
    assert [(r.status_code, r.excerpt, r.error) for r in results] == [(200, "ok", "")] * 3
    assert server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /hook?x=1 HTTP/1.1"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["Host"] == f"localhost:{port}"
    assert fields["User-Agent"] == USER_AGENT
    assert fields["Content-Length"] == str(len(BODY)) and body == BODY
    assert fields["webhook-id"] == "e1" and fields["Content-Type"] == "application/json"


def test_a_keep_alive_connection_the_receiver_closed_is_not_reused(run):
    async def scenario():
        server = Scripted(_answers(OK), after="close")  # closes after each answer, unsaid
        port = await server.start()
        try:
            async with make_session(4, 5.0, allow_private=True) as session:
                first = await post(session, f"http://127.0.0.1:{port}/", BODY, HEADERS)
                for _ in range(200):  # until the client has seen the receiver's FIN
                    if session.idle_connections() == 0:
                        break
                    await asyncio.sleep(0.01)
                second = await post(session, f"http://127.0.0.1:{port}/", BODY, HEADERS)
        finally:
            await server.stop()
        return server, first, second

    server, first, second = run(scenario())
    assert (first.status_code, second.status_code, second.error) == (200, 200, "")
    assert server.connections == 2


def test_connection_close_and_http_1_0_answers_close_the_connection(run):
    replies = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 201 Created\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        OK,
    ]

    async def scenario():
        server = Scripted(_answers(*replies))  # keeps its side open: the client must close
        port = await server.start()
        try:
            async with make_session(4, 5.0, allow_private=True) as session:
                url = f"http://127.0.0.1:{port}/"
                results = [await post(session, url, BODY, HEADERS) for _ in replies]
                await _until(lambda: server.client_closed >= 2)
                return server, results, server.client_closed
        finally:
            await server.stop()

    server, results, closed = run(scenario())
    assert [r.status_code for r in results] == [200, 200, 201, 200]
    # close, 1.0 without keep-alive: new connections; 1.0 keep-alive: reused for the 4th.
    assert server.connections == 3
    assert closed == 2


def test_a_chunked_answer_arriving_in_pieces(run):
    async def answer(number: int, request: bytes):
        return None

    class Trickle(Scripted):
        async def _handle(self, reader, writer) -> None:
            self.connections += 1
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                await reader.readexactly(len(BODY))
                self.requests.append(head)
                for piece in (
                    b"HTTP/1.1 400 Bad Request\r\nTransfer-",
                    b"Encoding: chunked\r\n\r\n4\r\nno, ",
                    b"\r\n11\r\nwrong signature\r\n\r\n0\r",
                    b"\n\r\n",
                ):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)
            writer.close()

    _, results = run(_exchange(Trickle(answer), 2))
    assert [(r.status_code, r.excerpt) for r in results] == [(400, "no, wrong signature\r\n")] * 2


def test_1xx_answers_are_skipped_and_a_close_delimited_body_is_read_to_the_end(run):
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 503 Busy\r\nRetry-After: 7\r\n\r\nlater"
    server = Scripted(_answers(reply), after="close")
    _, [result] = run(_exchange(server))
    assert (result.status_code, result.excerpt, result.retry_after) == (503, "later", 7.0)


def test_a_redirect_is_an_answer_not_followed(run):
    reply = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/\r\n"
    server = Scripted(_answers(reply + b"Content-Length: 0\r\n\r\n"))
    _, [result] = run(_exchange(server))
    assert result.status_code == 307 and not result.succeeded
    assert len(server.requests) == 1


def test_a_long_body_is_cut_at_a_kib_and_an_endless_header_is_an_error(run):
    long_body = b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000
    endless = b"HTTP/1.1 200 OK\r\nX-Junk: " + b"j" * 100000
    _, results = run(_exchange(Scripted(_answers(long_body, endless)), 2))
    assert (results[0].status_code, results[0].excerpt) == (500, "x" * 1024)
    assert results[1].status_code is None
    assert results[1].error == "the answer's header is over 32768 bytes"


def test_the_timeout_covers_the_whole_request(run):
    async def never(number: int, request: bytes):
        return None

    started = time.monotonic()
    _, [result] = run(_exchange(Scripted(never, after="hang"), timeout=0.3))
    assert (result.status_code, result.error) == (None, "timed out")
    assert 0.25 < time.monotonic() - started < 3


def test_no_more_connections_than_the_limit(run):
    async def slow(number: int, request: bytes):
        await asyncio.sleep(0.05)
        return OK

    async def scenario():
        server = Scripted(slow)
        port = await server.start()
        try:
            async with make_session(3, 5.0, allow_private=True) as session:
                url = f"http://127.0.0.1:{port}/"
                results = await asyncio.gather(
                    *(post(session, url, BODY, HEADERS) for _ in range(12))
                )
        finally:
            await server.stop()
        return server, results

    server, results = run(scenario())
    assert [r.status_code for r in results] == [200] * 12
    assert server.most_open == 3 and server.connections == 3


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_private_targets_are_refused_at_connect(host, run):
    async def scenario():
        server = Scripted(_answers(OK))
        port = await server.start()
        try:
            async with make_session(1, 5.0, allow_private=False) as session:
                return port, server, await post(session, f"http://{host}:{port}/", BODY, HEADERS)
        finally:
            await server.stop()

    port, server, result = run(scenario())
    assert result.status_code is None
    shown = host.strip("[]")
    assert result.error == f"refused: {shown}:{port} resolves to a private or reserved address"
    assert server.connections == 0


def test_tls_is_verified_with_the_given_ca_and_refused_without_it(tmp_path, run):
    files = write_test_certificates(tmp_path / "tls")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(files.server_cert, files.server_key)
    client_tls = ssl.create_default_context(cadata=files.ca_cert.read_text())

    port, results = run(
        _exchange(Scripted(_answers(OK), tls=server_tls), 2, scheme="https", tls=client_tls)
    )
    assert [(r.status_code, r.excerpt) for r in results] == [(200, "ok")] * 2

    port, [result] = run(_exchange(Scripted(_answers(OK), tls=server_tls), scheme="https"))
    assert result.status_code is None
    assert result.error.startswith(f"TLS certificate check failed for localhost:{port}: ")
    assert "certificate verify failed" in result.error


def test_idle_connections_are_closed_after_the_keep_alive_time(monkeypatch, run):
    monkeypatch.setattr(webclient, "KEEPALIVE_SECONDS", 0.1)

    async def scenario():
        server = Scripted(_answers(OK))
        port = await server.start()
        try:
            async with make_session(4, 5.0, allow_private=True) as session:
                result = await post(session, f"http://127.0.0.1:{port}/", BODY, HEADERS)
                assert session.idle_connections() == 1
                await _until(lambda: server.client_closed == 1)
                return server, result, session.idle_connections()
        finally:
            await server.stop()

    server, result, idle = run(scenario())
    assert (result.status_code, idle, server.client_closed) == (200, 0, 1)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_the_path_is_quoted(run):
    async def scenario():
        server = Scripted(_answers(OK))
        port = await server.start()
        try:
            async with make_session(1, 5.0, allow_private=True) as session:
                url = f"http://hook%40user:p%3Ass@127.0.0.1:{port}/a b/%7Ex?q=1 2#frag"
                return server, await post(session, url, BODY, HEADERS)
        finally:
            await server.stop()

    server, result = run(scenario())
    assert result.status_code == 200
    head = server.requests[0].decode()
    assert head.startswith("POST /a%20b/%7Ex?q=1%202 HTTP/1.1\r\n")
    token = base64.b64encode(b"hook@user:p:ss").decode()
    assert f"\r\nAuthorization: Basic {token}\r\n" in head
