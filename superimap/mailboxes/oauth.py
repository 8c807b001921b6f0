"""OAuth 2.0 connect and disconnect, web side (design.md section 7).

The signed connect_url of a user of an OAuth provider lands in ``begin()``: it stores a
random ``state`` in the Django session (with the user id and the partner's callbacks) and
redirects to the provider's consent page. The provider sends the browser back to
``/oauth2/callback`` with a code; ``callback()`` checks the state, exchanges the code for
tokens, reads the email address and saves the refresh token (encrypted). Disconnect revokes
the refresh token where the provider can (``revoke_refresh_token()``).

The HTTP client is authlib's httpx2 integration (sync: Django views run in a thread), over
netguard's transport: under IMAP_ALLOW_PRIVATE_HOSTS off, OAuth endpoints that resolve to
internal addresses are refused like mail hosts. Tokens are never logged and never shown.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time

import httpx2
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client, OAuthError
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_GET

from superimap.accounts import users as accounts_users
from superimap.mailboxes.links import LINK_MAX_AGE_SECONDS, use_link
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection
from superimap.platform import netguard

log = logging.getLogger("superimap.oauth")

SESSION_KEY = "superimap_oauth2"
MAX_PENDING = 5  # sign-ins started in other tabs that may still come back
HTTP_TIMEOUT_SECONDS = 30


class ConnectFailed(Exception):
    """The provider refused or failed; the message is safe to show and to log."""


def callback_url() -> str:
    return f"{settings.PUBLIC_URL}/oauth2/callback"


def _client(connection: Connection) -> OAuth2Client:
    return OAuth2Client(
        client_id=connection.oauth_client_id,
        client_secret=connection.oauth_client_secret,
        token_endpoint_auth_method="client_secret_post",
        revocation_endpoint_auth_method="client_secret_post",
        scope=connection.provider.oauth_scopes,
        redirect_uri=callback_url(),
        timeout=HTTP_TIMEOUT_SECONDS,
        # Token, userinfo and revoke calls connect to addresses netguard checked.
        transport=netguard.CheckedTransport(allow_private=settings.IMAP_ALLOW_PRIVATE_HOSTS),
    )


def _configured(connection: Connection) -> bool:
    return bool(
        connection.provider.is_usable()
        and connection.oauth_client_id
        and connection.oauth_client_secret
        and connection.oauth_url("authorize")
        and connection.oauth_url("token")
    )


# --- connect: to the provider ---------------------------------------------------------------


def begin(
    request: HttpRequest, user: MailboxUser, success: str, failure: str, *, link_nonce: str = ""
) -> HttpResponse:
    """Redirect to the provider's consent page. success/failure are already allowed URLs;
    link_nonce: the connect link's, recorded as used when the sign-in succeeds."""
    connection = user.connection
    if not _configured(connection):
        message = f"{connection.provider.brand} sign-in is not set up for this application."
        return _page(request, user, message, 503)
    state = generate_token(40)
    now = time.time()
    pending = {
        key: value
        for key, value in (request.session.get(SESSION_KEY) or {}).items()
        if now - value.get("at", 0) < LINK_MAX_AGE_SECONDS
    }
    for key in sorted(pending, key=lambda k: pending[k]["at"])[
        : max(0, len(pending) - MAX_PENDING + 1)
    ]:
        del pending[key]
    pending[state] = {
        "user": user.id,
        "success": success,
        "failure": failure,
        "at": now,
        "nonce": link_nonce,
    }
    request.session[SESSION_KEY] = pending
    extra = {"access_type": "offline", "prompt": "consent"}  # Google: needed for a refresh token
    if user.email:
        extra["login_hint"] = user.email
    url = prepare_grant_uri(
        connection.oauth_url("authorize"),
        client_id=connection.oauth_client_id,
        response_type="code",
        redirect_uri=callback_url(),
        scope=connection.provider.oauth_scopes,
        state=state,
        **extra,
    )
    return HttpResponseRedirect(url)


# --- connect: back from the provider ------------------------------------------------------


@require_GET
def callback(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state", "")
    pending = dict(request.session.get(SESSION_KEY) or {})
    entry = pending.pop(state, None) if state else None
    if entry is not None:
        request.session[SESSION_KEY] = pending  # a state is good for one use only
    if entry is None or time.time() - entry.get("at", 0) > LINK_MAX_AGE_SECONDS:
        message = (
            "This sign-in could not be matched to a connect request (or it has expired). "
            "Start again from the application."
        )
        return _page(request, None, message, 400)
    user = (
        MailboxUser.objects.select_related("connection__provider", "connection__partner")
        .filter(id=entry["user"], archived=False)
        .first()
    )
    if user is None:
        return _page(request, None, "This mailbox no longer exists.", 404)
    error = request.GET.get("error", "")
    if error or not request.GET.get("code"):
        log.info("oauth connect of user %s refused by the provider: %s", user.id, error[:100])
        message = "Access was not granted." if error == "access_denied" else "Sign-in failed."
        return _finish(request, user, entry["failure"], message, ok=False)
    try:
        refresh_token, email = exchange_code(user.connection, request.GET["code"])
    except ConnectFailed as exc:
        log.warning("oauth connect of user %s failed: %s", user.id, exc)
        return _finish(request, user, entry["failure"], f"Sign-in failed: {exc}", ok=False)
    with transaction.atomic():
        if entry.get("nonce") and not use_link(entry["nonce"]):
            message = "This connect link was used already. Start again from the application."
            return _page(request, None, message, 400)
        # user_connected: sent once the engine's first XOAUTH2 login succeeds.
        accounts_users.connect_user(user, email=email, oauth_refresh_token=refresh_token)
    log.info("oauth connect of user %s succeeded", user.id)
    return _finish(request, user, entry["success"], "Your mailbox is connected.", ok=True)


def exchange_code(connection: Connection, code: str) -> tuple[str, str]:
    """(refresh token, email) for an authorization code, or ConnectFailed."""
    with _client(connection) as client:
        try:
            token = client.fetch_token(
                connection.oauth_url("token"),
                grant_type="authorization_code",
                code=code,
                redirect_uri=callback_url(),
            )
        except OAuthError as exc:
            raise ConnectFailed(f"the provider refused the code ({exc.error})") from None
        except httpx2.HTTPStatusError as exc:
            status = exc.response.status_code
            raise ConnectFailed(f"the provider's token endpoint answered {status}") from None
        except (httpx2.HTTPError, ValueError) as exc:
            raise ConnectFailed(
                f"the provider's token endpoint failed ({type(exc).__name__})"
            ) from None
        refresh_token = token.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            raise ConnectFailed("the provider sent no refresh token")
        email = _email(client, connection, token)
    if not email:
        raise ConnectFailed("the provider did not tell the email address")
    return refresh_token, email


def _email(client: OAuth2Client, connection: Connection, token: dict) -> str:
    """From the id_token's email claim, else the userinfo endpoint (Google OIDC userinfo
    ``email``; Microsoft Graph ``me``: ``mail`` or ``userPrincipalName``), else the
    id_token's ``preferred_username``."""
    claims = id_token_claims(token.get("id_token"))
    if _text(claims.get("email")):
        return _text(claims["email"])
    url = connection.oauth_url("userinfo")
    if url:
        try:
            response = client.get(url)
            response.raise_for_status()
            info = response.json()
        except (httpx2.HTTPError, ValueError, OAuthError) as exc:
            log.warning("oauth userinfo failed (%s)", type(exc).__name__)
            info = {}
        email = email_from_userinfo(info if isinstance(info, dict) else {})
        if email:
            return email
    return _text(claims.get("preferred_username")) or _text(claims.get("upn"))


def email_from_userinfo(info: dict) -> str:
    for key in ("email", "mail", "userPrincipalName"):
        if _text(info.get(key)):
            return _text(info[key])
    return ""


def id_token_claims(id_token: object) -> dict:
    """The claims of an id_token, unverified: it came straight from the token endpoint over
    TLS, which OpenID Connect Core 3.1.3.7 accepts in place of checking the signature."""
    if not isinstance(id_token, str) or id_token.count(".") != 2:
        return {}
    payload = id_token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


# --- disconnect ---------------------------------------------------------------------------


def revoke_refresh_token(user: MailboxUser) -> bool:
    """Best effort: ask the provider to forget the refresh token. True if it said OK."""
    connection = user.connection
    url = connection.oauth_url("revoke")
    if not url or not user.oauth_refresh_token or not connection.provider.is_usable():
        return False
    try:
        with _client(connection) as client:
            response = client.revoke_token(
                url, token=user.oauth_refresh_token, token_type_hint="refresh_token"
            )
    except (httpx2.HTTPError, OAuthError, ValueError) as exc:
        log.warning("oauth revoke for user %s failed (%s)", user.id, type(exc).__name__)
        return False
    if response.status_code >= 400:
        log.warning("oauth revoke for user %s answered %s", user.id, response.status_code)
        return False
    log.info("oauth refresh token of user %s revoked", user.id)
    return True


# --- pages --------------------------------------------------------------------------------


def _finish(
    request: HttpRequest, user: MailboxUser, url: str, message: str, *, ok: bool
) -> HttpResponse:
    partner = user.connection.partner
    url = url or (partner.success_url if ok else partner.failure_url)
    if url:
        return HttpResponseRedirect(url)
    return _page(request, user, message, 200 if ok else 400)


def _page(request: HttpRequest, user: MailboxUser | None, message: str, status: int):
    return render(
        request, "mailboxes/result.html", {"user": user, "message": message}, status=status
    )
