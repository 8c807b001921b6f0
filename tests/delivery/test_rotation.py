"""Signing secret rotation: during the grace period webhooks carry one Standard Webhooks
signature per secret, and a stock Standard Webhooks library verifies either."""

from __future__ import annotations

from datetime import timedelta

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from superimap.accounts import partners
from superimap.delivery import outbox
from superimap.delivery.models import Delivery
from tests.helpers.delivery import make_partner, make_user


def test_it_signs_with_both_secrets_during_the_grace_period(
    seeded_providers, make_receiver, process
):
    receiver = make_receiver()
    partner = make_partner(receiver.url)
    old_secret = partner.webhook_secret
    new_secret = partners.rotate_webhook_secret(partner, timedelta(hours=1))
    outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, make_user(partner))

    assert process() == 1
    [event] = receiver.wait_for(1)
    headers = {name.lower(): value for name, value in event.headers.items()}
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old_secret, new_secret):
        payload = Webhook(secret).verify(event.body, event.headers)
        assert payload["event"] == "user_connected"


def test_it_signs_with_the_new_secret_only_after_the_grace_period(
    seeded_providers, make_receiver, process
):
    receiver = make_receiver()
    partner = make_partner(receiver.url)
    old_secret = partner.webhook_secret
    new_secret = partners.rotate_webhook_secret(partner, timedelta(seconds=0))
    outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, make_user(partner))

    assert process() == 1
    [event] = receiver.wait_for(1)
    assert Webhook(new_secret).verify(event.body, event.headers)["event"] == "user_connected"
    try:
        Webhook(old_secret).verify(event.body, event.headers)
    except WebhookVerificationError:
        pass
    else:
        raise AssertionError("the old secret still verifies after its grace period")


def test_a_rotation_after_a_send_is_used_by_the_next_claim(
    seeded_providers, make_receiver, process
):
    # The worker keeps decrypted secrets per stored ciphertext: a rotation stores a new
    # ciphertext, so the next claim signs with the new secret and the new API key.
    receiver = make_receiver()
    partner = make_partner(receiver.url)
    user = make_user(partner)
    outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, user)
    assert process() == 1
    receiver.wait_for(1)

    new_secret = partners.rotate_webhook_secret(partner, timedelta(seconds=0))
    receiver.receiver.api_key = partners.rotate_api_key(partner, timedelta(seconds=0))
    outbox.enqueue_user_event(Delivery.Kind.USER_DISCONNECTED, user)
    assert process() == 1
    first, second = receiver.wait_for(2)
    assert Webhook(new_secret).verify(second.body, second.headers)["event"] == "user_disconnected"
    assert second.valid_spec_signature
