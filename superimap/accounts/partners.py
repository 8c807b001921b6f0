"""Partners: their settings (URLs checked by one rule for the API, the dashboard and the CLI),
key and secret rotations, and what a changed webhook URL sets off."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from superimap.accounts.connections import restart_sessions
from superimap.accounts.errors import Refused
from superimap.delivery.models import EndpointHealth
from superimap.delivery.targets import WebhookTargetError, check_webhook_url
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import (
    NAME_TAKEN,
    URL_FIELDS,
    Partner,
    new_api_key,
    new_webhook_secret,
)
from superimap.platform.validation import host_problem, url_host_problem


def url_problems(partner: Partner, fields: Iterable[str] = URL_FIELDS) -> dict[str, str]:
    """{field: why} for the URLs among ``fields`` that are refused now: a host that is no
    host name (validation.host_problem), or a webhook URL that is not http(s) or, in
    production, resolves to an internal address (or does not resolve)."""
    problems = {}
    for field in fields:
        url = getattr(partner, field)
        if not url:
            continue
        if problem := url_host_problem(url):
            problems[field] = f"{problem}."
        elif field.endswith("_webhook"):
            try:
                check_webhook_url(url)
            except WebhookTargetError as exc:
                problems[field] = str(exc)
    return problems


def changed_url_fields(partner: Partner) -> list[str]:
    """The URL fields whose value differs from the saved row (all of them if new)."""
    saved = None
    if partner.pk is not None:
        saved = Partner.objects.filter(pk=partner.pk).values(*URL_FIELDS).first()
    return [f for f in URL_FIELDS if saved is None or saved[f] != getattr(partner, f)]


def partner_problems(partner: Partner, given: Iterable[str] = ()) -> dict[str, str]:
    """{field: why} for the URLs being changed or ``given`` (the API's body), and the allowed
    redirect hosts. A URL saved earlier that is refused now (a stale name, or one that
    resolves to a private address since) does not block an unrelated change: the worker
    refuses it when it sends, and the API reports it (stale_url_warnings())."""
    given = tuple(given)
    changed = changed_url_fields(partner)
    problems = url_problems(partner, [f for f in URL_FIELDS if f in given or f in changed])
    for host in partner.allowed_redirect_hosts.split(","):
        if host.strip() and (problem := host_problem(host.strip())):
            problems["allowed_redirect_hosts"] = f"{host.strip()!r} {problem}."
    return problems


def validate_partner(
    partner: Partner, given: Iterable[str] = (), exclude: Iterable[str] | None = None
) -> None:
    """The model's field checks and partner_problems(), as one ValidationError (the
    dashboard's form and the CLI)."""
    errors: dict[str, list[str]] = {}
    try:
        partner.full_clean(exclude=exclude)
    except ValidationError as exc:
        errors = exc.message_dict
    for field, problem in partner_problems(partner, given).items():
        errors.setdefault(field, []).append(problem)
    if errors:
        raise ValidationError(errors)


def stale_url_warnings(partner: Partner) -> list[str]:
    """What is wrong with the saved URLs, for the partner to fix (API answers)."""
    return [f"{field}: {problem}" for field, problem in url_problems(partner).items()]


def save_partner(partner: Partner) -> None:
    """Save; a webhook URL set again after a 410 Gone (which disabled its endpoint) is no
    longer shown as disabled. Change events switched on or off (the first change URL set,
    or the last cleared) restart the partner's sessions: only a session that starts with
    them does their work (design.md 4.14)."""
    saved = None
    if partner.pk is not None:
        saved = Partner.objects.filter(pk=partner.pk).first()
    partner.save()
    if saved is not None and saved.tracks_changes != partner.tracks_changes:
        restart_sessions(MailboxUser.objects.filter(connection__partner=partner))
    for health in EndpointHealth.objects.filter(
        partner=partner, state=EndpointHealth.State.DISABLED
    ):
        if partner.webhook_url(health.kind):
            health.state = EndpointHealth.State.HEALTHY
            health.consecutive_failures = 0
            health.save(update_fields=["state", "consecutive_failures", "updated_at"])


def update_partner(partner: Partner, fields: Mapping[str, object]) -> None:
    """The API's PUT /partner: set ``fields`` (as given; None leaves one as it is), check
    them, save. Refused 422 at a refused URL or a blank name, 409 for a name another
    partner has."""
    for name, value in fields.items():
        if value is not None:
            setattr(partner, name, value.strip() if isinstance(value, str) else value)
    for field, problem in partner_problems(partner, tuple(fields)).items():
        raise Refused(422, "invalid_field", f"{field}: {problem}", field)
    if not partner.name:
        raise Refused(422, "invalid_field", "name: must not be blank.", "name")
    if partner.name_taken():
        raise Refused(409, "name_taken", NAME_TAKEN, "name")
    save_partner(partner)


def _locked(partner: Partner) -> None:
    """Lock the partner's row and read it again (inside a transaction): two rotations at
    once must not both keep the same previous key."""
    Partner.objects.select_for_update().filter(pk=partner.pk).first()
    partner.refresh_from_db()


def rotate_api_key(partner: Partner, grace: timedelta) -> str:
    """A new API key; the current one keeps working for ``grace`` (data routes only).
    Rotating again ends the grace of the key before. Returns the new key."""
    with transaction.atomic():
        _locked(partner)
        partner.previous_api_key_hash = partner.api_key_hash
        partner.previous_api_key_until = timezone.now() + grace
        partner.api_key = new_api_key()
        partner.save()
    return partner.api_key


def rotate_webhook_secret(partner: Partner, grace: timedelta) -> str:
    """A new signing secret; webhooks carry signatures by both for ``grace``."""
    with transaction.atomic():
        _locked(partner)
        partner.previous_webhook_secret = partner.webhook_secret
        partner.previous_webhook_secret_until = timezone.now() + grace
        partner.webhook_secret = new_webhook_secret()
        partner.save()
    return partner.webhook_secret


def replace_credentials(partner: Partner) -> None:
    """A new API key and webhook secret at once, no grace period: the old ones stop working
    now (createpartner --if-exists rotate). Run inside a transaction, on a locked row."""
    now = timezone.now()
    partner.api_key = new_api_key()
    partner.webhook_secret = new_webhook_secret()
    partner.previous_api_key_hash = ""
    partner.previous_api_key_until = now
    partner.previous_webhook_secret = ""
    partner.previous_webhook_secret_until = now
    save_partner(partner)


def set_all_webhooks(partner: Partner, url: str) -> None:
    """Point every webhook kind at one URL (createpartner --webhook), not saved yet."""
    for kind in Partner.WEBHOOK_KINDS:
        setattr(partner, f"{kind}_webhook", url)
