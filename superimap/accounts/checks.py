"""The field checks every caller applies (API, dashboard, hosted pages, CLI): pure functions
of plain values, no database and no DNS, so they are unit-tested as tables
(tests/unit/accounts/). Each returns the problems it finds, in the order the API reports
them (it answers the first); the dashboard shows each on its field.

What needs the network (a host that resolves to a private address: netguard; a webhook
URL's target: delivery/targets.py) is checked by the state changes themselves.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from superimap.sync.filters import FilterError, parse_filters

OAUTH2 = "oauth2"
TLS_NONE = "none"
SMTP_FIELDS = ("smtp_host", "smtp_port", "smtp_tls")  # host-per-connection providers only
# Self-hosted servers' TLS options: host-per-connection providers only.
TLS_FIELDS = ("imap_tls_ca", "imap_tls_verify", "imap_allow_plaintext")
SERVER_FIELDS = ("imap_host", "imap_port", "imap_tls", *SMTP_FIELDS, *TLS_FIELDS)
OAUTH_CLIENT_FIELDS = ("oauth_client_id", "oauth_client_secret")
# What a user logs in with (MailboxUser.CREDENTIALS without the email, which is data too).
SECRETS = ("password", "oauth_refresh_token")


@dataclass(frozen=True)
class Problem:
    field: str
    code: str  # the API's error code: invalid_field, missing_field, private_host
    message: str  # as the API says it (names the field)
    form_message: str = ""  # as the dashboard's form says it on the field, if different

    @property
    def shown_on_form(self) -> str:
        return self.form_message or self.message


@dataclass(frozen=True)
class ProviderKind:
    """What the checks need to know of an IMAP provider (ImapProvider)."""

    code: str
    oauth: bool
    host_per_connection: bool
    loopback_only: bool = False

    @classmethod
    def of(cls, provider) -> ProviderKind:
        return cls(
            code=provider.code,
            oauth=provider.auth_kind == OAUTH2,
            host_per_connection=provider.host_per_connection,
            loopback_only=provider.loopback_only,
        )


def ca_bundle_problem(pem: str) -> str | None:
    """Why ``pem`` is no usable CA bundle (None if it is): it must hold certificates in PEM
    that ssl loads, as the engine will (imapclient/connection.py client_tls_context)."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        return "must be PEM certificate(s) (-----BEGIN CERTIFICATE-----)"
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        return f"is not a valid PEM certificate bundle: {exc}"
    return None


def _not_for(kind: ProviderKind) -> tuple[tuple[str, ...], str]:
    """The connection fields that do not apply to a provider, and how to say so."""
    if kind.host_per_connection:
        return (), ""
    if kind.oauth:
        return SERVER_FIELDS, "is fixed for"
    return (*SERVER_FIELDS, *OAUTH_CLIENT_FIELDS), "does not apply to"


def given_connection_problems(kind: ProviderKind, given: Mapping[str, object]) -> list[Problem]:
    """Connection fields given (set, not None) that the provider does not take, and a CA
    bundle that does not load."""
    problems = []
    if given.get("oauth_base_url") is not None and not (kind.loopback_only and kind.oauth):
        message = f"oauth_base_url does not apply to {kind.code}."
        problems.append(Problem("oauth_base_url", "invalid_field", message))
    fields, verb = _not_for(kind)
    for name in fields:
        if given.get(name) is not None:
            problems.append(Problem(name, "invalid_field", f"{name} {verb} {kind.code}."))
    pem = given.get("imap_tls_ca")
    if isinstance(pem, str) and pem and (problem := ca_bundle_problem(pem)):
        shown = f"The CA bundle {problem}."
        problems.append(Problem("imap_tls_ca", "invalid_field", f"imap_tls_ca {problem}.", shown))
    return problems


def required_connection_problems(kind: ProviderKind, values: Mapping[str, object]) -> list[Problem]:
    """What a connection of this provider cannot do without: ``values`` are its fields as
    they will be saved, plus ``oauth_token_url`` (Connection.oauth_url("token"))."""
    problems = []
    if kind.oauth:
        missing = [f for f in OAUTH_CLIENT_FIELDS if not values.get(f)]
        if missing:
            message = f"oauth_client_id and oauth_client_secret are required for {kind.code}."
            problems.append(Problem(missing[0], "missing_field", message))
        if not values.get("oauth_token_url"):
            message = f"oauth_base_url is required for {kind.code}."
            problems.append(Problem("oauth_base_url", "missing_field", message))
    if kind.host_per_connection and not values.get("imap_host"):
        message = f"imap_host is required for {kind.code}."
        problems.append(Problem("imap_host", "missing_field", message))
    return problems


def tls_problems(kind: ProviderKind, values: Mapping[str, object]) -> list[Problem]:
    """A connection without TLS that was not opted into: IMAP without TLS needs
    imap_allow_plaintext; SMTP without TLS is for loopback test providers."""
    if not kind.host_per_connection or kind.loopback_only:
        return []
    problems = []
    if values.get("imap_tls") == TLS_NONE and not values.get("imap_allow_plaintext"):
        message = (
            "imap_tls 'none' sends the password and mail unencrypted; "
            "set imap_allow_plaintext to true to allow it."
        )
        problems.append(Problem("imap_tls", "invalid_field", message))
    if values.get("smtp_tls") == TLS_NONE:
        message = "smtp_tls 'none' is only allowed for loopback test providers."
        problems.append(Problem("smtp_tls", "invalid_field", message))
    return problems


def given_credential_problems(kind: ProviderKind, given: Mapping[str, object]) -> list[Problem]:
    """Credentials given (non-empty) that the provider does not take: OAuth users connect
    through connect_url (a refresh token), the others with a password."""
    if kind.oauth:
        return [
            Problem(
                name,
                "invalid_field",
                f"{name} does not apply to {kind.code}; connect the user with connect_url.",
            )
            for name in ("password", "login_username")
            if given.get(name)
        ]
    if given.get("oauth_refresh_token"):
        message = f"oauth_refresh_token does not apply to {kind.code}."
        return [Problem("oauth_refresh_token", "invalid_field", message)]
    return []


def missing_credential_problems(
    given: Mapping[str, object], values: Mapping[str, object]
) -> list[Problem]:
    """New credentials need who to log in as: ``given`` the credentials set now, ``values``
    the user's fields as they will be saved."""
    problems = []
    if given.get("password") and not (values.get("login_username") or values.get("email")):
        message = "login_username or email is required with password."
        problems.append(Problem("login_username", "missing_field", message))
    if given.get("oauth_refresh_token") and not values.get("email"):
        message = "email is required with oauth_refresh_token."
        problems.append(Problem("email", "missing_field", message))
    return problems


def filters_problems(value: object, field: str = "filters") -> list[Problem]:
    """A filter list as the API, the dashboard and the CLI give it (sync/filters.py: the
    rules the engine applies): None and [] are fine (everything is delivered)."""
    try:
        parse_filters(value, field)
    except FilterError as exc:
        return [Problem(field, "invalid_field", str(exc), f"{exc.where} {exc.message}.")]
    return []
