"""The test SMTP server with the standard library's client."""

from __future__ import annotations

import asyncio
import smtplib

import pytest

from devtools.testing.smtp_server import SmtpServer


def _send(port: int, user: str, password: str, login: bool) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.ehlo()
        if login:
            client.user, client.password = user, password
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        else:
            client.login(user, password)
        client.sendmail("a@example.test", ["b@example.test"], b"Subject: hi\r\n\r\n.dot\r\n")


@pytest.mark.parametrize("login", [False, True])
def test_it_accepts_auth_and_hands_over_messages(login):
    got = []

    async def scenario():
        async with SmtpServer(on_message=lambda *m: got.append(m), users={"ann": "pw"}) as server:
            await asyncio.to_thread(_send, server.port, "ann", "pw", login)
            with pytest.raises(smtplib.SMTPAuthenticationError):
                await asyncio.to_thread(_send, server.port, "ann", "wrong", login)
            return server

    server = asyncio.run(scenario())
    assert got == [("a@example.test", ["b@example.test"], b"Subject: hi\r\n\r\n.dot\r\n")]
    assert server.received[0].username == "ann"
    assert server.auth_failures >= 1
