"""DNS rebinding, as a hostile partner tries it against production settings: a host name
that resolved to a public address when it was saved (or checked) resolves to 127.0.0.1 when
the service connects. Every outbound connection made for a partner goes through
netguard.resolve_checked() and to the address it checked, so none reaches the internal
service (real local servers here, which count what they see). tests/helpers/rebinding.py scripts
the lookups."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import re
from urllib.parse import urlsplit

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.test import Client

from devtools.testing import free_port
from devtools.testing.oauth_server import LoopbackOAuthServer
from superimap.engine.tracers import TracerSender, TracerTarget
from superimap.imapclient import AccessTokens, ImapConnection
from superimap.mailboxes import credentials
from superimap.mailboxes.links import make_link
from superimap.mailboxes.models import MailboxUser
from superimap.mailboxes.oauth import ConnectFailed, exchange_code, revoke_refresh_token
from superimap.partners.models import Connection, ImapProvider
from superimap.platform.netguard import PrivateTargetRefused
from tests.helpers.cli import run
from tests.helpers.configs import mailbox_config
from tests.helpers.delivery import ThreadedReceiver
from tests.helpers.listener import Listener
from tests.helpers.processes import Processes, query, superimap_env, wait_until
from tests.helpers.rebinding import PUBLIC, rebinding

INTERNAL_BODY = "internal admin page: secret=hunter2"


@pytest.fixture
def production(settings):
    """The production switches (SUPERIMAP_ENV=production): no private targets."""
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.IMAP_ALLOW_PRIVATE_HOSTS = False


@pytest.fixture
def internal_http():
    """A real HTTP service on 127.0.0.1 that answers with something only insiders see."""
    receiver = ThreadedReceiver(responses=lambda request: (200, INTERNAL_BODY))
    yield receiver
    receiver.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.sock.close()


# --- webhooks -----------------------------------------------------------------------------


def test_test_webhook_never_reads_an_internal_service_through_rebinding(
    api, production, internal_http
):
    port = urlsplit(internal_http.url).port
    with rebinding() as dns:
        name = dns.script("hooks.rebind.test", PUBLIC)
        hooks = {"user_connected_webhook": "", "user_disconnected_webhook": ""}
        r = api.put("/partner", {**hooks, "new_mail_webhook": f"http://{name}:{port}/hook"})
        assert r.status_code == 200, r.content  # public when saved
        assert r.json()["warnings"] == []
        dns.script(name, "127.0.0.1")  # ... and rebound to loopback afterwards
        saved = dns.lookups[name]
        r = api.post("/partner/test-webhook", {"kind": "new_mail"})
    assert r.status_code == 200, r.content
    result = r.json()
    assert result["status_code"] is None and result["succeeded"] is False
    assert result["error"] == f"refused: {name}:{port} resolves to a private or reserved address"
    assert result["response_excerpt"] == ""
    assert dns.lookups[name] - saved == 1  # the one lookup the connection used
    assert internal_http.received == []


def test_test_webhook_still_reaches_local_receivers_where_the_operator_allows_them(
    api, settings, internal_http
):
    """Development (WEBHOOK_ALLOW_PRIVATE on): the name resolves once, the request goes to
    that address and carries the name in its Host header."""
    settings.WEBHOOK_ALLOW_PRIVATE = True
    port = urlsplit(internal_http.url).port
    with rebinding() as dns:
        name = dns.script("hooks.rebind.test", "127.0.0.1")
        api.put("/partner", {"new_mail_webhook": f"http://{name}:{port}/hook"})
        result = api.post("/partner/test-webhook", {"kind": "new_mail"}).json()
    assert result["status_code"] == 200 and result["response_excerpt"] == INTERNAL_BODY
    [request] = internal_http.received
    assert request.headers["Host"] == f"{name}:{port}"


# --- OAuth endpoints ----------------------------------------------------------------------


def test_the_engine_never_asks_an_internal_token_endpoint(production):
    async def scenario():
        async with LoopbackOAuthServer() as server:
            with rebinding() as dns:
                name = dns.script("oauth.rebind.test", "127.0.0.1")
                config = mailbox_config(
                    auth_kind="oauth2",
                    refresh_token=server.issue_refresh_token("alice"),
                    oauth_token_url=f"http://{name}:{server.port}/token",
                    oauth_client_id=server.client_id,
                    oauth_client_secret=server.client_secret,
                )
                with pytest.raises(PrivateTargetRefused):
                    await AccessTokens(timeout=5).get(config)
                # An IP literal in the URL is checked as well (aiohttp resolves no literal).
                literal = dataclasses.replace(config, oauth_token_url=f"{server.base_url}/token")
                with pytest.raises(PrivateTargetRefused):
                    await AccessTokens(timeout=5).get(literal)
            return server.requests

    assert asyncio.run(scenario()) == []


def test_the_hosted_pages_never_ask_an_internal_token_or_revoke_endpoint(partner, production):
    server = LoopbackOAuthServer(login="alice")
    with server.in_thread(), rebinding() as dns:
        name = dns.script("oauth.rebind.test", "127.0.0.1")
        connection = Connection.objects.create(
            partner=partner,
            provider=ImapProvider.objects.get(code="LOOPBACK_OAUTH2"),
            imap_host="imap.example.com",
            oauth_client_id=server.client_id,
            oauth_client_secret=server.client_secret,
            oauth_base_url=f"http://{name}:{server.port}",
        )
        with pytest.raises(ConnectFailed, match="PrivateTargetRefused"):
            exchange_code(connection, "a-code")
        user = MailboxUser.objects.create(
            connection=connection, tag="alice", oauth_refresh_token="refresh-alice"
        )
        assert revoke_refresh_token(user) is False
    assert server.requests == [] and server.revoked == []


def test_the_hosted_pages_reach_a_local_oauth_server_where_the_operator_allows_it(
    partner, settings
):
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True
    server = LoopbackOAuthServer(login="alice")
    with server.in_thread(), rebinding() as dns:
        name = dns.script("oauth.rebind.test", "127.0.0.1")
        connection = Connection.objects.create(
            partner=partner,
            provider=ImapProvider.objects.get(code="LOOPBACK_OAUTH2"),
            imap_host="imap.example.com",
            oauth_client_id=server.client_id,
            oauth_client_secret=server.client_secret,
            oauth_base_url=f"http://{name}:{server.port}",
        )
        user = MailboxUser.objects.create(
            connection=connection,
            tag="alice",
            oauth_refresh_token=server.issue_refresh_token("alice"),
        )
        assert revoke_refresh_token(user) is True
    assert server.revoked == [user.oauth_refresh_token]


# --- IMAP and SMTP hosts ------------------------------------------------------------------


def test_the_hosted_form_never_logs_in_to_an_internal_server_through_rebinding(
    partner, production, dovecot
):
    """The form checked the name, then imaplib resolved it again and logged in to whatever
    answered then. Now its one lookup is the one it connects to."""
    dovecot.add_user("internal", "internal-pw")
    with rebinding() as dns:
        name = dns.script("imap.rebind.test", PUBLIC, "127.0.0.1")
        connection = Connection.objects.create(
            partner=partner,
            provider=ImapProvider.objects.get(code="PLAIN"),
            imap_host=name,
            imap_port=dovecot.imap_port,
            imap_tls="none",
            imap_allow_plaintext=True,
        )
        user = MailboxUser.objects.create(connection=connection, tag="alice")
        link = make_link(user.id, "connect").removeprefix(django_settings.PUBLIC_URL)
        form = {"email": "alice@example.com", "login_username": "internal"}
        r = Client().post(link, {**form, "password": "internal-pw"})
    assert r.status_code == 200
    assert credentials.UNREACHABLE in r.content.decode()
    user.refresh_from_db()
    assert user.connected_at is None and user.password == ""
    assert dns.lookups[name] == 1
    assert dns.public_connects == [(PUBLIC, dovecot.imap_port)]  # the checked address only


def test_the_hosted_form_refuses_a_name_that_resolves_internally(partner, production, listener):
    with rebinding() as dns:
        name = dns.script("imap.rebind.test", "127.0.0.1")
        connection = Connection(
            partner=partner,
            provider=ImapProvider.objects.get(code="PLAIN"),
            imap_host=name,
            imap_port=listener.port,
            imap_tls="starttls",
        )
        assert credentials.check_login(connection, "user", "pw") == credentials.UNREACHABLE
    assert listener.accepted() == 0


def test_the_engine_never_connects_to_an_internal_server_through_rebinding(
    api, production, listener
):
    with rebinding() as dns:
        name = dns.script("imap.rebind.test", PUBLIC, "127.0.0.1")
        r = api.post(
            "/connections",
            {"imap_provider_code": "PLAIN", "imap_host": name, "imap_port": listener.port},
        )
        assert r.status_code == 201, r.content  # public when saved

        async def open_it():
            return await ImapConnection.open(
                name,
                listener.port,
                implicit_tls=True,
                insecure=False,
                timeout=5,
                max_literal_size=1024,
            )

        with pytest.raises(PrivateTargetRefused):
            asyncio.run(open_it())
    assert dns.lookups[name] == 2
    assert listener.accepted() == 0


def _tracer_target(host: str, port: int) -> TracerTarget:
    return TracerTarget(
        config=mailbox_config(),
        address="alice@example.com",
        host=host,
        port=port,
        tls="starttls",
        uids=("u1",),
    )


def test_tracer_smtp_never_connects_to_an_internal_server_through_rebinding(production, listener):
    """The sender checked the name, then aiosmtplib resolved it again."""
    sender = TracerSender(engine=None, interval=60, count=1, timeout=2)
    with rebinding() as dns:
        name = dns.script("smtp.rebind.test", PUBLIC, "127.0.0.1")
        with pytest.raises(ConnectionRefusedError):  # the checked, public address
            asyncio.run(sender._send(_tracer_target(name, listener.port)))
        assert dns.public_connects == [(PUBLIC, listener.port)]
        with pytest.raises(PrivateTargetRefused):  # the next lookup, internal: refused
            asyncio.run(sender._send(_tracer_target(name, listener.port)))
    assert dns.lookups[name] == 2
    assert listener.accepted() == 0


# --- a real production process ------------------------------------------------------------


def test_a_production_web_process_never_reads_an_internal_service_through_test_webhook(
    tmp_path, internal_http
):
    """`superimap web` with SUPERIMAP_ENV=production: the partner's webhook host was public
    when saved (written straight into the row here) and now resolves to 127.0.0.1."""
    database_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    production = {
        "SUPERIMAP_ENV": "production",
        "ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "SECRET_KEY_BASE": "s" * 40,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",  # plain HTTP on 127.0.0.1 in this test
    }
    env = {**superimap_env(database_url, tmp_path), **production}
    base = {"DATABASE_URL": database_url, "VAR_DIR": str(tmp_path), **production}
    assert run(["migrate"], tmp_path, **base).returncode == 0
    created = run(["createpartner", "--name", "Hostile app"], tmp_path, **base)
    api_key = re.search(r"API key: (\S+)", created.stdout).group(1)
    hook_port = urlsplit(internal_http.url).port
    query(
        database_url,
        f"UPDATE partners_partner SET new_mail_webhook = 'http://localhost:{hook_port}/hook'",
    )
    port = free_port()
    with Processes(tmp_path) as procs:
        procs.start(env, "web", "--port", str(port))

        def test_webhook():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
                conn.request(
                    "POST",
                    "/api/v1/partner/test-webhook",
                    body=json.dumps({"kind": "new_mail"}),
                    headers={"X-API-Key": api_key, "Content-Type": "application/json"},
                )
                response = conn.getresponse()
                return response.status, json.loads(response.read())
            except OSError:
                return None

        status, result = wait_until(test_webhook, 30, "the production web process")
    assert status == 200, result
    assert result["status_code"] is None and result["response_excerpt"] == ""
    assert result["error"].startswith(f"refused: localhost:{hook_port} resolves to a private")
    assert internal_http.received == []
