"""X-Forwarded-For is believed only from TRUSTED_PROXIES (default: none), so a client
cannot pose as another address to reset the per-IP login lockout."""

from __future__ import annotations

import asyncio

import pytest

from superimap.runtime import web_config
from tests.helpers.cli import run


def client_seen(config, client: str, forwarded_for: str) -> tuple[str, str]:
    """(client address, scheme) the application sees behind uvicorn's configured stack."""
    seen = {}

    async def app(scope, receive, send):
        seen["client"] = scope["client"][0]
        seen["scheme"] = scope["scheme"]

    config.app = app
    config.loaded = False
    config.load()
    scope = {
        "type": "http",
        "scheme": "http",
        "client": (client, 50000),
        "headers": [
            (b"x-forwarded-for", forwarded_for.encode()),
            (b"x-forwarded-proto", b"https"),
        ],
    }
    asyncio.run(config.loaded_app(scope, None, None))
    return seen["client"], seen["scheme"]


def test_it_ignores_forwarded_headers_by_default(settings):
    settings.TRUSTED_PROXIES = []
    config = web_config(None, "127.0.0.1", 8000)
    assert client_seen(config, "127.0.0.1", "9.9.9.9") == ("127.0.0.1", "http")


def test_it_believes_forwarded_headers_from_a_trusted_proxy_only(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert client_seen(web_config(None, "127.0.0.1", 8000), "10.1.2.3", "9.9.9.9") == (
        "9.9.9.9",
        "https",
    )
    assert client_seen(web_config(None, "127.0.0.1", 8000), "127.0.0.1", "9.9.9.9") == (
        "127.0.0.1",
        "http",
    )


@pytest.mark.parametrize("value", ["*", "proxy.example.com", "10.0.0.0/33"])
def test_it_refuses_a_bad_trusted_proxies_value_at_start(value, tmp_path):
    result = run(["check"], tmp_path, TRUSTED_PROXIES=value)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "TRUSTED_PROXIES:" in lines[0], result.stderr
