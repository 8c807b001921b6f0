"""Hosted connect/disconnect pages reached through a user's signed connect_url/disconnect_url."""

from __future__ import annotations

import logging
from urllib.parse import urlencode, urlsplit

from django import forms
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from superimap.accounts import users as accounts_users
from superimap.mailboxes import oauth
from superimap.mailboxes.credentials import check_login
from superimap.mailboxes.links import Link, parse_link, use_link
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import ImapProvider

log = logging.getLogger("superimap.mailboxes")


class PasswordConnectForm(forms.Form):
    email = forms.EmailField(max_length=320)
    login_username = forms.CharField(
        max_length=320, required=False, help_text="Leave empty to log in with the email address."
    )
    password = forms.CharField(max_length=2000, widget=forms.PasswordInput(render_value=False))


def _user_from_token(token: str, action: str) -> tuple[MailboxUser | None, Link | None]:
    link = parse_link(token, action)
    if link is None:
        return None, None
    user = (
        MailboxUser.objects.select_related("connection__provider", "connection__partner")
        .filter(id=link.user_id, archived=False)
        .first()
    )
    return user, link


def _requested_callback(request: HttpRequest, outcome: str) -> str:
    return request.GET.get(outcome) or request.POST.get(outcome) or ""


def _callback(request: HttpRequest, user: MailboxUser, outcome: str) -> str:
    """The partner's callback URL for this outcome, only if it is on an allowed host."""
    partner = user.connection.partner
    url = _requested_callback(request, outcome)
    if url and partner.redirect_allowed(url):
        return url
    return partner.success_url if outcome == "success" else partner.failure_url


def _refused_callback(request: HttpRequest, user: MailboxUser) -> HttpResponse | None:
    """An error page (and a log line) when ?success= or ?failure= points to a host the partner
    did not allow: never an open redirect, and never a silent fallback either."""
    partner = user.connection.partner
    for outcome in ("success", "failure"):
        url = _requested_callback(request, outcome)
        if url and not partner.redirect_allowed(url):
            try:
                host = urlsplit(url).hostname or url[:100]
            except ValueError:
                host = url[:100]
            log.warning(
                "callback refused: %s host %r is not allowed for partner %r (id %s); "
                "allow it in the partner's allowed_redirect_hosts",
                outcome,
                host,
                partner.name,
                partner.id,
            )
            message = (
                f"This link would send you back to {host!r} afterwards, which the application "
                "has not registered with SuperIMAP, so nothing was done. Please tell the "
                "application's support: the host must be added to its allowed redirect hosts."
            )
            return render(request, "mailboxes/result.html", {"message": message}, status=400)
    return None


def _finish(request: HttpRequest, user: MailboxUser, outcome: str, message: str) -> HttpResponse:
    url = _callback(request, user, outcome)
    if url:
        return HttpResponseRedirect(url)
    status = 200 if outcome == "success" else 400
    return render(
        request, "mailboxes/result.html", {"user": user, "message": message}, status=status
    )


def _invalid_link(request: HttpRequest) -> HttpResponse:
    message = "This link is invalid or has expired. Ask the application for a new one."
    return render(request, "mailboxes/result.html", {"message": message}, status=404)


@require_http_methods(["GET", "POST"])
def connect(request: HttpRequest, token: str) -> HttpResponse:
    user, link = _user_from_token(token, "connect")
    if user is None:
        return _invalid_link(request)
    refused = _refused_callback(request, user)
    if refused is not None:
        return refused
    provider = user.connection.provider
    if provider.auth_kind == ImapProvider.AuthKind.OAUTH2:
        success, failure = _callback(request, user, "success"), _callback(request, user, "failure")
        return oauth.begin(request, user, success, failure, link_nonce=link.nonce)
    # Prefilled with what the partner gave through the API; the person adds the password.
    initial = {"email": user.email, "login_username": user.login_username}
    form = PasswordConnectForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        username = form.cleaned_data["login_username"] or form.cleaned_data["email"]
        problem = check_login(user.connection, username, form.cleaned_data["password"])
        if problem:
            form.add_error(None, problem)
        else:
            with transaction.atomic():
                if not use_link(link.nonce):  # a concurrent request used it first
                    return _invalid_link(request)
                # user_connected: sent by the engine's first login with these credentials
                # (this check's login is the form's, not the engine's).
                accounts_users.connect_user(
                    user,
                    email=form.cleaned_data["email"],
                    login_username=username,
                    password=form.cleaned_data["password"],
                )
            return _finish(request, user, "success", "Your mailbox is connected.")
    query = urlencode({k: v for k, v in request.GET.items() if k in ("success", "failure")})
    return render(request, "mailboxes/connect.html", {"user": user, "form": form, "query": query})


@require_http_methods(["GET", "POST"])
def disconnect(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows a confirmation page; only its POST (CSRF-protected) disconnects, so mail
    scanners and link previews that fetch the URL change nothing."""
    user, link = _user_from_token(token, "disconnect")
    if user is None:
        return _invalid_link(request)
    refused = _refused_callback(request, user)
    if refused is not None:
        return refused
    if request.method == "GET":
        query = urlencode({k: v for k, v in request.GET.items() if k in ("success", "failure")})
        return render(request, "mailboxes/disconnect.html", {"user": user, "query": query})
    if user.oauth_refresh_token and user.connection.provider.auth_kind == "oauth2":
        oauth.revoke_refresh_token(user)  # best effort: the credentials go either way
    with transaction.atomic():
        if not use_link(link.nonce):  # a concurrent request used it first
            return _invalid_link(request)
        accounts_users.disconnect_user(user.id)
    return _finish(request, user, "success", "Your mailbox is disconnected.")
