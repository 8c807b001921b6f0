"""SSRF guard: partner-chosen IMAP/SMTP hosts on private networks are refused in production
(IMAP_ALLOW_PRIVATE_HOSTS off) when saved and again when connecting."""

from __future__ import annotations

import asyncio
import socket

import pytest
from django.core.exceptions import ValidationError

from superimap.accounts.connections import validate_connection
from superimap.imapclient import ImapConnection
from superimap.mailboxes.credentials import check_login
from superimap.partners.models import Connection, ImapProvider
from superimap.platform.netguard import PrivateTargetRefused
from tests.helpers.api import assert_error
from tests.helpers.configs import mailbox_config
from tests.helpers.listener import Listener


@pytest.fixture
def production_hosts(settings):
    settings.IMAP_ALLOW_PRIVATE_HOSTS = False


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.sock.close()


@pytest.mark.parametrize(
    "fields",
    [
        {"imap_host": "169.254.169.254", "imap_port": 80},
        {"imap_host": "127.0.0.1", "imap_port": 6379},
        {"imap_host": "localhost"},
        {"imap_host": "10.0.0.8"},
        {"imap_host": "[::1]"},
        {"imap_host": "::ffff:192.168.0.1"},
        {"imap_host": "imap.example.com", "smtp_host": "127.0.0.1", "smtp_port": 25},
    ],
)
def test_it_refuses_private_hosts_on_create(api, production_hosts, fields):
    r = api.post("/connections", {"imap_provider_code": "PLAIN", **fields})
    assert_error(r, 422, "private_host")
    assert Connection.objects.count() == 0


def test_it_refuses_private_hosts_on_update(api, plain_connection, production_hosts):
    r = api.put("/connections/PLAIN", {"imap_host": "192.168.1.1"})
    assert_error(r, 422, "private_host")
    plain_connection.refresh_from_db()
    assert plain_connection.imap_host == "imap.example.com"


def test_it_accepts_a_public_address(api, production_hosts):
    r = api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "93.184.216.34"})
    assert r.status_code == 201, r.content


def test_it_allows_private_hosts_when_the_operator_does(api, settings):
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True
    r = api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "127.0.0.1"})
    assert r.status_code == 201


def test_the_dashboard_form_refuses_private_hosts_too(partner, production_hosts):
    connection = Connection(
        partner=partner, provider=ImapProvider.objects.get(code="PLAIN"), imap_host="127.0.0.1"
    )
    with pytest.raises(ValidationError) as error:
        validate_connection(connection)
    assert "imap_host" in error.value.message_dict


def test_the_engine_refuses_a_private_host_when_connecting(listener, production_hosts):
    async def open_it():
        return await ImapConnection.open(
            "127.0.0.1",
            listener.port,
            implicit_tls=False,
            insecure=True,
            timeout=5,
            max_literal_size=1024,
        )

    with pytest.raises(PrivateTargetRefused) as refused:
        asyncio.run(open_it())
    assert "127.0.0.1" not in str(refused.value).split(":", 2)[-1]  # no resolved address
    assert listener.accepted() == 0


def test_the_engine_connects_to_private_hosts_when_allowed(listener, settings):
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True

    async def open_it():
        with pytest.raises(TimeoutError):  # no greeting from a bare listener
            await ImapConnection.open(
                "127.0.0.1",
                listener.port,
                implicit_tls=False,
                insecure=True,
                timeout=0.5,
                max_literal_size=1024,
            )

    asyncio.run(open_it())
    assert listener.accepted() == 1


def test_the_hosted_form_says_the_same_for_open_and_closed_private_ports(
    partner, listener, production_hosts
):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    provider = ImapProvider.objects.get(code="PLAIN")
    messages = set()
    for port in (listener.port, closed_port):
        connection = Connection(
            partner=partner, provider=provider, imap_host="127.0.0.1", imap_port=port
        )
        connection.imap_tls = "starttls"
        messages.add(check_login(connection, "user", "pw"))
    assert len(messages) == 1
    message = messages.pop()
    assert "Error" not in message and "Refused" not in message
    assert listener.accepted() == 0


def test_the_engine_reports_a_refused_host_without_any_network_detail(
    seeded_providers, listener, production_hosts
):
    from django.db import close_old_connections
    from django.utils import timezone

    from superimap.mailboxes.models import MailboxUser
    from superimap.partners.models import Partner
    from tests.helpers.engine import RunningEngine, loopback_connection, wait_for

    mail_partner = Partner.objects.create(name="Mail app")

    # Saved while allowed (or a name that resolved elsewhere then): refused on connect.
    user = MailboxUser.objects.create(
        connection=loopback_connection(mail_partner, listener.port),
        tag="alice",
        login_username="alice",
        password="pw",
        connected_at=timezone.now(),
    )

    def last_error() -> str:
        close_old_connections()
        return MailboxUser.objects.get(id=user.id).last_error

    async def scenario():
        async with RunningEngine():
            return await wait_for(last_error)

    error = asyncio.run(scenario())
    expected = f"127.0.0.1:{listener.port} resolves to a private or reserved address"
    assert error == f"PrivateTargetRefused: {expected}"
    assert listener.accepted() == 0


def test_the_message_route_refuses_a_private_host_when_connecting(
    partner, listener, production_hosts
):
    from django.test import Client
    from django.utils import timezone

    from superimap.delivery.payloads import message_url
    from superimap.mailboxes.models import MailboxUser
    from tests.helpers.engine import loopback_connection

    user = MailboxUser.objects.create(
        connection=loopback_connection(partner, listener.port),
        tag="alice",
        login_username="alice",
        password="pw",
        connected_at=timezone.now(),
    )
    url = message_url("LOOPBACK_PLAIN", user.tag, 1, 1)
    r = Client().get(url[url.index("/api/v1/") :], HTTP_X_API_KEY=partner.api_key)
    error = assert_error(r, 502, "imap_unavailable")
    assert (
        f"127.0.0.1:{listener.port} resolves to a private or reserved address" in error["message"]
    )
    assert listener.accepted() == 0


def test_tracer_smtp_refuses_a_private_host_when_connecting(listener, production_hosts):
    from superimap.engine.tracers import TracerSender, TracerTarget

    config = mailbox_config()
    target = TracerTarget(
        config=config,
        address="alice@example.com",
        host="127.0.0.1",
        port=listener.port,
        tls="starttls",
        uids=("u1",),
    )
    sender = TracerSender(engine=None, interval=60, count=1, timeout=2)
    with pytest.raises(PrivateTargetRefused):
        asyncio.run(sender._send(target))
    assert listener.accepted() == 0
