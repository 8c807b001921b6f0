"""Request parameters merged as Rails merges them, so the original's clients work unchanged.

The original (Rails) read one `params` hash built from the query string and the body,
whatever the body's encoding: JSON, `application/x-www-form-urlencoded` or
`multipart/form-data`. Its own README's client (rest-client 2.1) sends a Ruby hash
form-encoded even when told `content_type: :json`. This middleware turns every API write
body into the one JSON object our schemas validate:

- the body is read as JSON when it is a JSON object, else as multipart (when declared) or as a
  form, whatever the Content-Type says (a form body declared as JSON is still understood);
- query-string parameters are merged over the body's, as Rails does (`api_key` and `format`
  are not body fields);
- form keys `name[]` make lists; for a key given twice the last value wins, as in Rails;
- form and query values are text, as in Rails; digit strings of the integer fields that are
  strict in JSON (`STRICT_INTEGER_FIELDS`: ports) are read as numbers, as Rails cast them;
- `api_key` in the body authenticates like the header or query parameter (Rails' `params`);
- a `.json` format suffix on the path is dropped (`/api/v1/connections.json`), as Rails routes
  took `(.:format)`.

A body that is none of these is left alone, so the API answers its usual JSON 400.
"""

from __future__ import annotations

import json
from io import BytesIO
from urllib.parse import parse_qsl

from django.http import HttpRequest, HttpResponse, QueryDict
from django.http.multipartparser import MultiPartParser, MultiPartParserError

from superimap.api.errors import error_response
from superimap.api.schemas import STRICT_INTEGER_FIELDS

WRITE_METHODS = {"POST", "PUT", "PATCH"}
NOT_BODY_FIELDS = {"api_key", "format"}
JSON_SUFFIX = ".json"
KEEP_SUFFIX_FOR = "/openapi.json"  # a file, not a resource


def _text_value(key: str, value: str) -> str | int:
    """A form or query value: text, except a digit string for a strict integer field."""
    if key in STRICT_INTEGER_FIELDS and value.isascii() and value.isdigit():
        return int(value)
    return value


def _from_pairs(pairs: list[tuple[str, str]]) -> dict:
    params: dict = {}
    for key, text in pairs:
        value = _text_value(key.removesuffix("[]"), text)
        if key.endswith("[]"):
            params.setdefault(key[:-2], [])
            if isinstance(params[key[:-2]], list):
                params[key[:-2]].append(value)
        else:
            params[key] = value
    return params


def _from_querydict(data: QueryDict) -> dict:
    return _from_pairs([(key, value) for key, values in data.lists() for value in values])


def body_params(request: HttpRequest, body: bytes) -> dict | None:
    """The body's parameters, or None when it cannot be read as JSON, multipart or a form."""
    if not body.strip():
        return {}
    if body.lstrip()[:1] == b"{":
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict):
            return data
    content_type = request.META.get("CONTENT_TYPE", "")
    if content_type.startswith("multipart/form-data"):
        try:
            fields, _files = MultiPartParser(
                request.META, BytesIO(body), request.upload_handlers, request.encoding
            ).parse()
        except MultiPartParserError:
            return None
        return _from_querydict(fields)
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    return _from_pairs(pairs)


def merged_params(request: HttpRequest) -> dict | None:
    """Body and query parameters in one dict (the query wins); `format` dropped."""
    body = body_params(request, request.body)
    if body is None:
        return None
    query = {k: v for k, v in _from_querydict(request.GET).items() if k not in NOT_BODY_FIELDS}
    params = {**body, **query}
    params.pop("format", None)
    return params


def _key_given(request: HttpRequest) -> bool:
    return bool(request.META.get("HTTP_X_API_KEY") or request.GET.get("api_key"))


class RailsParamsMiddleware:
    """Rewrites API write bodies as one JSON object (see the module docstring)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/"):
            path = request.path_info
            if path.endswith(JSON_SUFFIX) and not path.endswith(KEEP_SUFFIX_FOR):
                request.path_info = request.path_info.removesuffix(JSON_SUFFIX)
                request.path = request.path.removesuffix(JSON_SUFFIX)
            if request.method in WRITE_METHODS:
                refused = self._rewrite(request)
                if refused is not None:
                    return refused
        return self.get_response(request)

    def _rewrite(self, request: HttpRequest) -> HttpResponse | None:
        try:
            params = merged_params(request)
        except (ValueError, OSError):
            return error_response(400, "bad_request", "Cannot read the request body.")
        if params is not None:
            body_key = params.pop("api_key", None)
            if isinstance(body_key, str) and not _key_given(request):
                request.META["HTTP_X_API_KEY"] = body_key
            request._body = json.dumps(params).encode()
            request.META["CONTENT_TYPE"] = "application/json"
            request.META["CONTENT_LENGTH"] = str(len(request._body))
            # Django may have parsed a form body already; let it parse the new body if asked.
            for cached in ("_post", "_files"):
                if hasattr(request, cached):
                    delattr(request, cached)
        return None
