"""JSON errors for the API: {"error": {"code": ..., "message": ...}}, never HTML."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

from superimap.accounts.errors import Refused


class ApiError(Refused):
    """Raised by API views; rendered as a JSON error with the given status, as the
    Refused of a state change (superimap/accounts) is."""


def error_response(status: int, code: str, message: str, details=None) -> JsonResponse:
    body: dict = {"error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return JsonResponse(body, status=status)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found_view(request: HttpRequest, exception=None) -> HttpResponse:
    if _is_api(request):
        return error_response(404, "not_found", "No such route.")
    return defaults.page_not_found(request, exception)


def server_error_view(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return error_response(500, "internal_error", "Internal server error.")
    return defaults.server_error(request)


_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


class ApiJsonErrorsMiddleware:
    """Rewrites non-JSON error responses under /api/ (e.g. ninja's plain-text 405) as JSON."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            _is_api(request)
            and response.status_code >= 400
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            status = response.status_code
            message = response.reason_phrase or "Error."
            if status == 405:
                message = f"Method {request.method} is not allowed here."
            json_response = error_response(status, _DEFAULT_CODES.get(status, "error"), message)
            if response.has_header("Allow"):
                json_response["Allow"] = response["Allow"]
            return json_response
        return response


class ApiBodyLimitMiddleware:
    """Refuses oversized API bodies with a JSON 413 before anything reads them."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if _is_api(request):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return error_response(400, "bad_request", "Invalid Content-Length header.")
            limit = settings.API_BODY_LIMIT
            if length > limit:
                return error_response(
                    413, "payload_too_large", f"Request body is larger than {limit} bytes."
                )
        return self.get_response(request)
