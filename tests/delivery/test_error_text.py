"""A failed POST's last_error is in words an operator reads at a glance (issue 17): what
went wrong and with which host, not aiohttp's exception repr."""

from __future__ import annotations

import asyncio
import socket

from devtools.testing import free_port
from superimap.delivery.http import make_session, post


async def _post(url: str) -> str:
    async with make_session(1, 5.0, allow_private=True) as session:
        result = await post(session, url, b"{}", {"Content-Type": "application/json"})
    assert result.status_code is None
    return result.error


def test_a_refused_connection_names_the_host_and_port():
    port = free_port()
    error = asyncio.run(_post(f"http://127.0.0.1:{port}/hook"))
    assert error == f"connection refused by 127.0.0.1:{port} (nothing listening?)"


def test_a_receiver_that_hangs_up_without_answering_is_said_so():
    async def scenario() -> str:
        async def hang_up(reader, writer):
            await reader.read(10)
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0, family=socket.AF_INET)
        port = server.sockets[0].getsockname()[1]
        try:
            return await _post(f"http://127.0.0.1:{port}/hook")
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(scenario()) == "the receiver closed the connection without answering"


def test_a_name_that_does_not_resolve_is_a_dns_failure():
    error = asyncio.run(_post("http://no-such-host.invalid/hook"))
    assert error.startswith("DNS lookup failed for no-such-host.invalid: ")
