"""Encrypted model fields: Fernet tokens at rest, plaintext in Python.

ENCRYPTION_KEY may hold several comma-separated keys: the first encrypts, all decrypt
(MultiFernet), so keys can be rotated with `superimap rotate-keys`. A value that no key
can decrypt raises DecryptionError; it is never returned as ciphertext.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


class DecryptionError(Exception):
    """A stored value could not be decrypted with any configured ENCRYPTION_KEY."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            "stored secret cannot be decrypted with ENCRYPTION_KEY (wrong or missing key)"
        ) from None


class EncryptedTextField(models.TextField):
    """A text column holding a Fernet token. Empty string means 'not set'."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("blank", True)
        kwargs.setdefault("default", "")
        super().__init__(*args, **kwargs)

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(str(value))
