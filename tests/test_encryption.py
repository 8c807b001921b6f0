"""Secrets are Fernet tokens at rest, never plaintext; keys can be rotated."""

import secrets

import pytest
from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings
from django.db import connection
from django.test import override_settings

from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, Partner
from superimap.platform.fields import DecryptionError
from superimap.platform.keys import encrypted_fields, reencrypt_all
from tests.helpers.api import ApiClient
from tests.helpers.database import database_file_bytes


@pytest.fixture
def stored_secrets(seeded_providers) -> dict[str, str]:
    """A partner, an OAuth connection and a password user made through the API."""
    partner = Partner.objects.create(name="Crypto app")
    api = ApiClient(partner.api_key)
    client_secret = "oauth-" + secrets.token_hex(16)
    password = "pw-" + secrets.token_hex(16)
    r = api.post(
        "/connections",
        {
            "imap_provider_code": "GMAIL_OAUTH2",
            "oauth_client_id": "client-id",
            "oauth_client_secret": client_secret,
        },
    )
    assert r.status_code == 201
    r = api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "imap.example"})
    assert r.status_code == 201
    r = api.post(
        "/connections/PLAIN/users", {"tag": "u", "email": "u@x.example", "password": password}
    )
    assert r.status_code == 201
    return {
        "api_key": partner.api_key,
        "webhook_secret": partner.webhook_secret,
        "oauth_client_secret": client_secret,
        "password": password,
    }


def raw_column(table: str, column: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE {column} != ''")
        return [row[0] for row in cursor.fetchall()]


def test_it_never_writes_a_secret_in_plaintext(stored_secrets):
    data = database_file_bytes()
    assert b"u@x.example" in data  # control: unencrypted columns of the same rows are there
    for name, secret in stored_secrets.items():
        assert secret.encode() not in data, name


def test_it_stores_fernet_tokens(stored_secrets):
    fernet = MultiFernet([Fernet(k) for k in settings.ENCRYPTION_KEYS])
    tokens = {
        "api_key": raw_column("partners_partner", "api_key"),
        "webhook_secret": raw_column("partners_partner", "webhook_secret"),
        "oauth_client_secret": raw_column("partners_connection", "oauth_client_secret"),
        "password": raw_column("mailboxes_mailboxuser", "password"),
    }
    for name, values in tokens.items():
        decrypted = [fernet.decrypt(v.encode()).decode() for v in values]
        assert stored_secrets[name] in decrypted, name


def test_it_raises_on_a_wrong_key_instead_of_returning_ciphertext(stored_secrets):
    with override_settings(ENCRYPTION_KEYS=[Fernet.generate_key().decode()]):
        with pytest.raises(DecryptionError):
            MailboxUser.objects.get(tag="u")
        with pytest.raises(DecryptionError):
            Connection.objects.get(provider__code="GMAIL_OAUTH2")


def test_it_rotates_keys(stored_secrets):
    new_key = Fernet.generate_key().decode()
    with override_settings(ENCRYPTION_KEYS=[new_key, *settings.ENCRYPTION_KEYS]):
        assert reencrypt_all() > 0
    only_new = MultiFernet([Fernet(new_key)])
    for model, names in encrypted_fields():
        for name in names:
            for token in raw_column(model._meta.db_table, model._meta.get_field(name).column):
                only_new.decrypt(token.encode())
    with override_settings(ENCRYPTION_KEYS=[new_key]):
        assert MailboxUser.objects.get(tag="u").password == stored_secrets["password"]
        connection_ = Connection.objects.get(provider__code="GMAIL_OAUTH2")
        assert connection_.oauth_client_secret == stored_secrets["oauth_client_secret"]
