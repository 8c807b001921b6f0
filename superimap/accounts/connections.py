"""Connections (a partner's use of one provider) and providers: their settings, checked by
the same rules for the API and the dashboard, and the session restarts they set off.

A change of a setting its users' IMAP sessions use (Connection.TRACKED, ImapProvider.TRACKED:
server, TLS, OAuth client, folders) restarts those sessions at once, so a tls_failed mailbox
need not wait out its back-off; other changes (SMTP for tracers) restart nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.utils import timezone

from superimap.accounts.checks import (
    OAUTH_CLIENT_FIELDS,
    SERVER_FIELDS,
    Problem,
    ProviderKind,
    filters_problems,
    given_connection_problems,
    required_connection_problems,
    tls_problems,
)
from superimap.accounts.errors import refuse
from superimap.changes import new_session_version
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner
from superimap.platform.netguard import PrivateTargetRefused, check_host
from superimap.platform.validation import host_problem

# The settings the rules are about (accounts.checks).
SETTINGS = (*SERVER_FIELDS, *OAUTH_CLIENT_FIELDS, "oauth_base_url")


def restart_sessions(users: QuerySet) -> None:
    """Make the engine restart the IMAP sessions of these users."""
    users.update(session_version=new_session_version(), updated_at=timezone.now())


def save_connection(connection: Connection) -> None:
    """Save; a changed session setting restarts the sessions of the connection's users."""
    changed = connection.pk is not None and connection.tracked_changed()
    connection.save()
    connection.remember_tracked()
    if changed:
        restart_sessions(MailboxUser.objects.filter(connection=connection))


def save_provider(provider: ImapProvider) -> None:
    """Save; a changed server setting restarts the sessions of every user of the provider."""
    changed = provider.pk is not None and provider.tracked_changed()
    provider.save()
    provider.remember_tracked()
    if changed:
        restart_sessions(MailboxUser.objects.filter(connection__provider=provider))


def _values(connection: Connection) -> dict[str, object]:
    return {**vars(connection), "oauth_token_url": connection.oauth_url("token")}


def private_host_problems(connection: Connection) -> list[Problem]:
    """A partner-chosen host (imap_host, smtp_host) that resolves to a private or reserved
    address, unless IMAP_ALLOW_PRIVATE_HOSTS. A name that does not resolve now passes: the
    engine checks again before every connection."""
    if settings.IMAP_ALLOW_PRIVATE_HOSTS or not connection.provider.host_per_connection:
        return []
    problems = []
    for field, (host, port, _tls) in (
        ("imap_host", connection.server()),
        ("smtp_host", connection.smtp_server()),
    ):
        if not host or host_problem(host):
            continue
        try:
            check_host(host, port)
        except PrivateTargetRefused:
            message = (
                f"{field} must be a public mail server; it resolves to a private or "
                "reserved address."
            )
            problems.append(Problem(field, "private_host", message))
        except (OSError, UnicodeError):
            pass
    return problems


def _settled_problems(connection: Connection) -> list[Problem]:
    """The rules on the connection as it will be saved, in the API's order."""
    kind = ProviderKind.of(connection.provider)
    values = _values(connection)
    required = required_connection_problems(kind, values)
    if required:
        return required
    return [*private_host_problems(connection), *tls_problems(kind, values)]


def connection_problems(connection: Connection, given: Mapping[str, object]) -> list[Problem]:
    """Every rule the API applies, for a connection whose fields ``given`` are set on it
    already (the dashboard's form). Empty when it may be saved."""
    filters = filters_problems(connection.filters)
    if connection.provider_id is None:
        return filters
    problems = given_connection_problems(ProviderKind.of(connection.provider), given)
    return filters or problems or _settled_problems(connection)


def apply_connection_fields(connection: Connection, fields: Mapping[str, object]) -> None:
    """Set ``fields`` (given, not None: an API body) on the connection, not saved yet;
    Refused 422 at the first rule they break."""
    refuse(given_connection_problems(ProviderKind.of(connection.provider), fields))
    for name, value in fields.items():
        setattr(connection, name, value.strip() if isinstance(value, str) else value)
    refuse(_settled_problems(connection))


def create_connection(
    partner: Partner, provider: ImapProvider, fields: Mapping[str, object]
) -> Connection:
    connection = Connection(partner=partner, provider=provider)
    apply_connection_fields(connection, fields)
    save_connection(connection)
    return connection


def update_connection(connection: Connection, fields: Mapping[str, object]) -> None:
    apply_connection_fields(connection, fields)
    save_connection(connection)


def set_fields(connection: Connection) -> dict[str, object]:
    """The connection's settings that differ from their defaults: what was given, for a
    connection built by hand or in the dashboard's form."""
    return {
        field.attname: getattr(connection, field.attname)
        for field in Connection._meta.concrete_fields
        if field.name in SETTINGS and getattr(connection, field.attname) != field.get_default()
    }


def validate_connection(connection: Connection) -> None:
    """The model's field checks, then every rule above, as one ValidationError (for a
    connection built by hand)."""
    connection.full_clean()
    errors: dict[str, list[str]] = {}
    for problem in connection_problems(connection, set_fields(connection)):
        errors.setdefault(problem.field, []).append(problem.shown_on_form)
    if errors:
        raise ValidationError(errors)
