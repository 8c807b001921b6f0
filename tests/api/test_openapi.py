"""The OpenAPI schema is served, and a property-based run against it finds no 5xx."""

import json

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from superimap.api.api import api as ninja_api

APP = get_wsgi_application()
# Loaded from the in-process app, not over the network; needs no database.
SCHEMA = schemathesis.openapi.from_dict(ninja_api.get_openapi_schema())
SCHEMA.app = APP


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
        "/api/v1/deliveries",
        "/api/v1/deliveries/{event_id}/retry",
    }


def test_it_documents_both_ways_to_send_the_key(client, db):
    schemes = client.get("/api/v1/openapi.json").json()["components"]["securitySchemes"]
    locations = {(s["in"], s["name"]) for s in schemes.values()}
    assert locations == {("header", "x-api-key"), ("query", "api_key")}


def test_it_loads_as_a_valid_schema_in_schemathesis():
    operations = [op.ok() for op in SCHEMA.get_all_operations()]
    assert len(operations) == 11


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


@pytest.fixture
def seeded(api, partner):
    """Some data so generated requests also reach existing objects."""
    api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "imap.example.com"})
    api.post("/connections/PLAIN/users", {"tag": "alice", "email": "a@example.com"})
    return partner


@SCHEMA.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_it_has_no_server_errors(case, seeded):
    case.call_and_validate(
        headers={"x-api-key": seeded.api_key}, checks=[not_a_server_error, json_error_shape]
    )
