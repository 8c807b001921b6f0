"""The OpenAPI schema is served, and a property-based run against it finds no 5xx."""

import json
import zlib

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser

APP = get_wsgi_application()
# Loaded from the in-process WSGI app, not over the network; serving it needs no database.
SCHEMA = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", APP)


def test_it_serves_the_openapi_schema(client, db):
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    schema = r.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    assert set(paths) >= {
        "/api/v1/connections",
        "/api/v1/connections/{code}",
        "/api/v1/connections/{code}/users",
        "/api/v1/connections/{code}/users/{tag}",
        "/api/v1/connections/{code}/users/{tag}/sweep",
        "/api/v1/connections/{code}/users/{tag}/backfill",
        "/api/v1/connections/{code}/users/{tag}/messages/{uid_validity}/{uid}",
        "/api/v1/connections/{code}/users/{tag}/messages",
        "/api/v1/deliveries",
        "/api/v1/deliveries/{event_id}/retry",
        "/api/v1/partner",
        "/api/v1/partner/rotate-api-key",
        "/api/v1/partner/rotate-secret",
        "/api/v1/partner/test-webhook",
        "/api/v1/deliveries/replay",
    }


def test_it_declares_the_message_route_as_rfc822_with_json_errors(client, db):
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    route = paths["/api/v1/connections/{code}/users/{tag}/messages/{uid_validity}/{uid}"]["get"]
    assert set(route["responses"]) == {"200", "401", "404", "409", "422", "429", "502"}
    assert "message/rfc822" in route["responses"]["200"]["content"]
    assert "application/json" in route["responses"]["404"]["content"]


def test_it_documents_form_bodies_and_the_originals_names(client, db):
    schema = client.get("/api/v1/openapi.json").json()
    create_user = schema["paths"]["/api/v1/connections/{code}/users"]["post"]["requestBody"]
    assert set(create_user["content"]) == {
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    }
    components = schema["components"]["schemas"]
    assert {"login_password", "oauth2_refresh_token", "archived"} <= set(
        components["UserIn"]["properties"]
    )
    assert {"login_password", "oauth2_refresh_token", "archived"} <= set(
        components["UserUpdate"]["properties"]
    )
    assert {"oauth2_client_id", "oauth2_client_secret"} <= set(
        components["ConnectionIn"]["properties"]
    )


def test_it_documents_both_ways_to_send_the_key(client, db):
    schemes = client.get("/api/v1/openapi.json").json()["components"]["securitySchemes"]
    locations = {(s["in"], s["name"]) for s in schemes.values()}
    assert locations == {("header", "x-api-key"), ("query", "api_key")}


def test_it_loads_as_a_valid_schema_in_schemathesis():
    operations = [op.ok() for op in SCHEMA.get_all_operations()]
    assert len(operations) == 27


def test_it_renders_the_docs_page(client, db):
    r = client.get("/api/v1/docs")
    assert r.status_code == 200
    assert b"openapi.json" in r.content


@schemathesis.check
def json_error_shape(ctx, response, case):
    if 400 <= response.status_code < 500:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/json"), f"not JSON: {content_type}"
        error = json.loads(response.content)["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
    return None


# 502 is the documented answer when the partner's IMAP server cannot be reached or read
# (verify=true, the message route): the fault is upstream, not ours. Every other 5xx, or a
# 502 with another body, is a server error.
UPSTREAM_CODES = {"imap_unavailable", "imap_tls_failed", "imap_auth_failed"}


@schemathesis.check
def no_server_error(ctx, response, case):
    if response.status_code == 502:
        assert json.loads(response.content)["error"]["code"] in UPSTREAM_CODES
        declared = case.operation.definition.raw.get("responses", {})
        assert "502" in declared, f"undeclared 502 from {case.path}"
        return None
    return not_a_server_error(ctx, response, case)


@pytest.fixture
def seeded(api, partner):
    """Some data so generated requests also reach existing objects."""
    api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "imap.example.com"})
    api.post("/connections/PLAIN/users", {"tag": "alice", "email": "a@example.com"})
    user = MailboxUser.objects.get(tag="alice")
    failed = Delivery.objects.create(
        kind="user_connected",
        partner=partner,
        user=user,
        payload={},
        status="failed",
        next_attempt_at=timezone.now(),
    )
    partner.existing = {
        "code": "PLAIN",
        "tag": "alice",
        "event_id": str(failed.event_id),
        "uid_validity": 1,
        "uid": 1,
    }
    # The raw WSGI app closes DB connections after each request, which would end the test's
    # transaction; Django's test client avoids that the same way. (Done after seeding, since
    # the test client reconnects the receivers after each of its requests.)
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield partner
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@SCHEMA.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_it_has_no_server_errors(case, seeded):
    # Random path parameters only ever reach "404 not found"; aim three cases in four at
    # existing objects so the bodies get exercised too.
    if case.path_parameters and zlib.crc32(repr(case.path_parameters).encode()) % 4:
        for name in case.path_parameters:
            case.path_parameters[name] = seeded.existing[name]
    case.call_and_validate(
        headers={"x-api-key": seeded.api_key}, checks=[no_server_error, json_error_shape]
    )


@SCHEMA.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_it_has_no_server_errors_in_production_mode(case, seeded, production_mode):
    """As above with the settings of SUPERIMAP_ENV=production (webhook, IMAP and SMTP hosts
    are resolved and internal ones refused): host names the IDNA encoder refuses were 500s."""
    if case.path_parameters and zlib.crc32(repr(case.path_parameters).encode()) % 4:
        for name in case.path_parameters:
            case.path_parameters[name] = seeded.existing[name]
    case.call_and_validate(
        headers={"x-api-key": seeded.api_key}, checks=[no_server_error, json_error_shape]
    )


def test_the_docs_page_loads_swagger_ui_from_this_origin_only(client, db):
    r = client.get("/api/v1/docs")
    assert r.status_code == 200
    page = r.content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in page
    assert "/static/ninja/swagger-ui-init.js" in page
    assert "https://" not in page  # no CDN, no validator badge
    assert '"validatorUrl": null' in page
    assert "script-src 'self'" in r["Content-Security-Policy"]
    assert "unsafe-inline" not in r["Content-Security-Policy"].split("script-src")[1].split(";")[0]
    assert client.get("/static/ninja/swagger-ui-bundle.js").status_code == 200
