"""Content-Security-Policy on every response, in every environment.

Our pages (dashboard, connect and disconnect pages, API docs) load scripts, styles and
images from this origin only; the connect pages' inline <style> is the one exception.
No framing (clickjacking of the connect form), no plugins, no <base> rewriting.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware

BASE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# The dashboard's forms post to itself. The hosted connect/disconnect forms redirect to
# the partner's callback after the POST, which browsers check against form-action: no
# form-action there (their action is relative, to this origin).
ADMIN_POLICY = BASE_POLICY + "; form-action 'self'"


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return add_policy(request, self.get_response(request))


def add_policy(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    if "Content-Security-Policy" not in response:
        policy = ADMIN_POLICY if request.path.startswith("/admin/") else BASE_POLICY
        response["Content-Security-Policy"] = policy
    return response


def add_security_headers(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """The headers the middleware of settings.MIDDLEWARE put on every answer (nosniff,
    Referrer-Policy, Cross-Origin-Opener-Policy, HSTS over https, X-Frame-Options, CSP),
    by the same code, for answers made before Django (the front door's 401/413)."""

    def unused(request: HttpRequest) -> HttpResponse:
        raise AssertionError("only process_response is used")

    SecurityMiddleware(unused).process_response(request, response)
    XFrameOptionsMiddleware(unused).process_response(request, response)
    return add_policy(request, response)
