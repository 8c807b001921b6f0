"""Safe webhook targets: http(s) only; with WEBHOOK_ALLOW_PRIVATE off (the production
default) internal addresses are refused when a URL is saved and again at connect time."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp
import pytest
from django.core.exceptions import ValidationError

from superimap.accounts.partners import validate_partner
from superimap.delivery import outbox
from superimap.delivery.models import Delivery, DeliveryAttempt
from superimap.delivery.targets import WebhookTargetError, check_webhook_url
from superimap.partners.models import Partner
from superimap.platform.netguard import CheckedConnector, PrivateTargetRefused
from tests.helpers.delivery import make_partner, make_user
from tests.helpers.rebinding import PUBLIC, rebinding

REFUSED = [
    "http://127.0.0.1/hook",
    "http://localhost:8000/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.5/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "https://100.64.1.1/hook",
    "http://0.0.0.0/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_it_refuses_internal_targets_when_private_is_not_allowed(url):
    with pytest.raises(WebhookTargetError, match="refused"):
        check_webhook_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://h/"])
def test_it_refuses_other_schemes_always(url):
    with pytest.raises(WebhookTargetError, match="http or https"):
        check_webhook_url(url, allow_private=True)


def test_it_accepts_public_and_when_allowed_private_targets():
    check_webhook_url("https://93.184.216.34/hook", allow_private=False)
    check_webhook_url("http://127.0.0.1:9/hook", allow_private=True)


def test_it_is_allowed_in_tests_and_off_in_production_by_default(settings):
    assert settings.WEBHOOK_ALLOW_PRIVATE is True  # SUPERIMAP_ENV=test
    import subprocess
    import sys

    code = (
        "import os; os.environ.update(SUPERIMAP_ENV='production', ALLOWED_HOSTS='x', "
        "SECRET_KEY_BASE='s'*40, ENCRYPTION_KEY='" + _fernet_key() + "'); "
        "os.environ.pop('WEBHOOK_ALLOW_PRIVATE', None); "
        "import superimap.settings as s; print(s.WEBHOOK_ALLOW_PRIVATE)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def test_it_refuses_to_save_an_internal_url_in_production(db, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    partner = Partner(name="p", new_mail_webhook="http://169.254.169.254/hook")
    with pytest.raises(ValidationError) as error:
        validate_partner(partner)
    assert "new_mail_webhook" in error.value.message_dict
    partner.new_mail_webhook = "https://93.184.216.34/hook"
    validate_partner(partner, exclude=["api_key", "webhook_secret"])


def test_the_dashboard_form_shows_the_refusal(admin_client, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    r = admin_client.post(
        "/admin/partners/partner/add/",
        {
            "name": "evil",
            "new_mail_webhook": "http://127.0.0.1:6379/",
            "include_rfc822": "on",
        },
    )
    assert r.status_code == 200
    assert "private or reserved address" in r.content.decode()
    assert not Partner.objects.filter(name="evil").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_worker_refuses_internal_targets_at_connect_time(
    seeded_providers, make_receiver, process, clock, settings, host
):
    receiver = make_receiver()
    # Saved while allowed (or resolved differently then: DNS rebinding); now it is not.
    partner = make_partner(receiver.url.replace("127.0.0.1", host))
    delivery = outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, make_user(partner))
    settings.WEBHOOK_ALLOW_PRIVATE = False
    clock.set(delivery.next_attempt_at)
    assert process() == 1
    assert receiver.received == []
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING
    assert delivery.last_error.startswith("refused:")
    assert DeliveryAttempt.objects.get(delivery=delivery).error.startswith("refused:")

    settings.WEBHOOK_ALLOW_PRIVATE = True  # development: the same URL is fine
    clock.set(Delivery.objects.get(id=delivery.id).next_attempt_at)
    assert process() == 1
    assert len(receiver.wait_for(1)) == 1


def test_the_worker_refuses_a_name_rebound_to_loopback_after_it_was_saved(
    seeded_providers, make_receiver, process, clock, settings
):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    receiver = make_receiver()
    port = urlsplit(receiver.url).port
    with rebinding() as dns:
        name = dns.script("hooks.rebind.test", PUBLIC, "127.0.0.1")
        url = f"http://{name}:{port}"
        check_webhook_url(url)  # saved while the name pointed to a public address
        partner = make_partner(url)
        delivery = outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, make_user(partner))
        clock.set(delivery.next_attempt_at)
        assert process() == 1
    assert dns.lookups[name] == 2  # the save, then the connection (to what it checked)
    assert receiver.received == []
    delivery.refresh_from_db()
    assert delivery.last_error.startswith("refused:")
    assert delivery.status == Delivery.Status.PENDING


@pytest.mark.parametrize(
    "url", ["http://localhost:9/", "http://127.0.0.1:9/", "http://[::1]:9/", "http://127.1:9/"]
)
def test_the_connector_refuses_internal_names_and_literals_alike(url):
    """aiohttp hands IP literals to no resolver; CheckedConnector checks them too."""

    async def scenario():
        connector = CheckedConnector(allow_private=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            await session.get(url)

    with pytest.raises((PrivateTargetRefused, aiohttp.InvalidUrlClientError)):
        asyncio.run(scenario())
