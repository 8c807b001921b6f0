"""Hosted connect/disconnect pages reached through a user's signed connect_url/disconnect_url."""

from __future__ import annotations

import logging
from urllib.parse import urlencode, urlsplit

from django import forms
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from superimap.delivery.models import Delivery
from superimap.delivery.outbox import enqueue_user_event
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
    form = PasswordConnectForm(request.POST or None, initial={"email": user.email})
    if request.method == "POST" and form.is_valid():
        username = form.cleaned_data["login_username"] or form.cleaned_data["email"]
        problem = check_login(user.connection, username, form.cleaned_data["password"])
        if problem:
            form.add_error(None, problem)
        else:
            with transaction.atomic():
                if not use_link(link.nonce):  # a concurrent request used it first
                    return _invalid_link(request)
                user.email = form.cleaned_data["email"]
                user.login_username = username
                user.password = form.cleaned_data["password"]
                user.connected_at = timezone.now()
                user.status = MailboxUser.Status.NEW
                user.last_error = ""
                user.consecutive_failures = 0
                # Sent by the engine's first login with these credentials, as for the API
                # (one rule; this check's login is the form's, not the engine's).
                user.owe_connected()
                user.save()
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
        # Locked and re-read: the engine's persist_batch locks the same row, so either its
        # new_mail commits before this (and before user_disconnected) or it sees the user
        # gone and discards its batch. Never a new_mail after user_disconnected.
        locked = MailboxUser.objects.select_for_update().filter(id=user.id).first()
        was_connected = locked is not None and locked.connected_at is not None
        if locked is not None:
            locked.password = ""
            locked.oauth_refresh_token = ""
            locked.connected_at = None
            locked.connect_pending = ""  # its credentials are gone: nothing left to tell
            locked.status = MailboxUser.Status.STOPPED
            locked.save()
        if was_connected:
            enqueue_user_event(Delivery.Kind.USER_DISCONNECTED, user)
    return _finish(request, user, "success", "Your mailbox is disconnected.")
