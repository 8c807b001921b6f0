"""Every API error is JSON: {"error": {"code", "message"}}, never HTML and never a 500."""

import pytest
from django.conf import settings

from tests.helpers.api import assert_error


def test_it_answers_400_json_for_malformed_json(api):
    assert_error(api.post("/connections", raw="{not json"), 400, "bad_request")


def test_it_answers_400_json_for_invalid_utf8(api):
    assert_error(api.post("/connections", raw=b"\xff\xfe{"), 400)


def test_it_answers_422_json_for_wrong_types(api):
    error = assert_error(api.post("/connections", {"imap_provider_code": 5}), 422)
    assert error["code"] == "validation_error"
    assert error["details"][0]["loc"][-1] == "imap_provider_code"


def test_it_answers_422_json_for_a_json_array_body(api):
    assert_error(api.post("/connections", raw="[1, 2]"), 422, "validation_error")


def test_it_answers_422_json_for_a_null_body(api):
    assert_error(api.post("/connections", raw="null"), 422)


def test_it_answers_422_json_for_unknown_fields(api):
    r = api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "h", "admin": True})
    assert_error(r, 422, "validation_error")


def test_it_answers_422_json_for_unknown_fields_on_update(api, plain_connection):
    assert_error(api.put("/connections/PLAIN", {"partner": 2}), 422)


def test_it_answers_422_json_for_a_nul_character(api, partner):
    r = api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "a\x00b"})
    assert_error(r, 422, "validation_error")
    assert not partner.connections.exists()


def test_it_answers_404_json_for_a_nul_in_the_path(api, plain_connection):
    assert_error(api.get("/connections/PLAIN/users/a%00b"), 404)


def test_it_answers_413_json_for_an_oversized_body(api, partner):
    raw = '{"imap_provider_code": "' + "x" * settings.API_BODY_LIMIT + '"}'
    assert_error(api.post("/connections", raw=raw), 413, "payload_too_large")
    assert not partner.connections.exists()


def test_it_answers_404_json_for_an_unknown_api_route(api):
    assert_error(api.get("/no-such-thing"), 404, "not_found")


def test_it_answers_404_json_outside_v1(client):
    assert_error(client.get("/api/v2/connections"), 404)


@pytest.mark.parametrize(
    "method, path",
    [
        ("patch", "/api/v1/connections"),
        ("delete", "/api/v1/connections"),
        ("post", "/api/v1/connections/PLAIN"),
        ("post", "/api/v1/connections/PLAIN/users/alice"),
        ("get", "/api/v1/deliveries/00000000-0000-0000-0000-000000000000/retry"),
    ],
)
def test_it_answers_405_json_for_a_wrong_method(client, partner, method, path):
    r = getattr(client, method)(path, HTTP_X_API_KEY=partner.api_key)
    assert_error(r, 405, "method_not_allowed")
    assert r.has_header("Allow")


def test_it_answers_a_wrong_method_without_a_key_in_json(client):
    r = client.patch("/api/v1/connections")
    assert r["Content-Type"].startswith("application/json")


def test_it_keeps_html_404_outside_the_api(client, db):
    r = client.get("/no-such-page")
    assert r.status_code == 404
    assert not r["Content-Type"].startswith("application/json")


def test_422_locations_name_the_field_as_the_caller_sent_it(api, plain_connection):
    error = assert_error(api.post("/connections", {"imap_provider_code": 5}), 422)
    assert error["details"][0]["loc"] == ["body", "imap_provider_code"]
    error = assert_error(api.put("/connections/PLAIN/users/x", {"enable_tracer": "x"}), 422)
    assert error["details"][0]["loc"] == ["body", "enable_tracer"]
    error = assert_error(api.post("/deliveries/replay", {"since": "2026-01-01T00:00:00Z"}), 422)
    assert error["details"] == [
        {"loc": ["body", "until"], "msg": "Field required", "type": "missing"}
    ]
    error = assert_error(api.get("/deliveries?limit=0"), 422)
    assert error["details"][0]["loc"] == ["query", "limit"]
