"""What the client needs to know of a mailbox: its server and its credentials.

Shapes, not classes to inherit: the engine's MailboxConfig (engine/store.py) has all of
these fields, and the hosted form's check builds a PasswordAccount. The client never
imports the engine or the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Server(Protocol):
    """Where to connect and how: tls is "implicit", "starttls" or "none"; tls_ca a PEM
    bundle that replaces the system CAs ("" = system CAs); insecure_tls skips the check."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def tls(self) -> str: ...
    @property
    def insecure_tls(self) -> bool: ...
    @property
    def tls_ca(self) -> str: ...


class Account(Server, Protocol):
    """A server and a login: auth_kind "password" (LOGIN) or "oauth2" (XOAUTH2 with an
    access token from the refresh token and the OAuth client settings)."""

    @property
    def user_id(self) -> int: ...
    @property
    def label(self) -> str: ...
    @property
    def provider_code(self) -> str: ...
    @property
    def auth_kind(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str: ...
    @property
    def refresh_token(self) -> str: ...
    @property
    def oauth_token_url(self) -> str: ...
    @property
    def oauth_client_id(self) -> str: ...
    @property
    def oauth_client_secret(self) -> str: ...


@dataclass(frozen=True)
class PasswordAccount:
    """A password login not saved anywhere yet (the hosted form's and the API's check)."""

    host: str
    port: int
    tls: str
    username: str
    password: str
    insecure_tls: bool = False
    tls_ca: str = ""
    user_id: int = 0
    label: str = "login check"
    provider_code: str = ""
    auth_kind: str = "password"
    refresh_token: str = ""
    oauth_token_url: str = ""
    oauth_client_id: str = ""
    oauth_client_secret: str = ""

    def __repr__(self) -> str:
        return f"PasswordAccount({self.username!r} at {self.host}:{self.port})"
