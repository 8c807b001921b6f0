"""Issue #15 item 7: imap_host, smtp_host, webhook and callback hosts are host names (an IP
address or an RFC 1123 / IDNA name), by one rule (superimap.platform.validation.host_problem)
that the API, the dashboard and the CLI share; and the no-TLS rules hold in the dashboard too."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from superimap.accounts.connections import validate_connection
from superimap.accounts.partners import validate_partner
from superimap.partners.models import Connection, ImapProvider, Partner
from tests.helpers.api import assert_error

NOT_HOST_NAMES = [
    "imap.example.com\r\nX-Injected: 1",  # line break
    "imap.example.com\n.example",
    "imap.\u202emoc.example",  # right-to-left override
    "imap\u3164.example.com",  # Hangul filler, invisible
    "imap example.com",  # space
    "user@imap.example.com",
    "imap.example.com:993",
    "https://imap.example.com/",
    "imap.example.com/path",
    "a..b",
    ".a",
    "a" * 64 + ".example.com",  # label over 63 characters
    "-imap.example.com",
    "imap_1.example.com",
    "127.1",  # all-numeric last label: no IP address, no name
    "[1.2.3.4]",  # brackets belong to IPv6
    "fe80::1%eth0",  # an interface zone
    "\U0001f4a9.example.com",  # not valid IDNA 2008
]
HOST_NAMES = [
    "imap.example.com",
    "IMAP.Example.COM",
    "imap.example.com.",
    "mail",
    "b\u00fccher.example",  # IDNA: xn--bcher-kva.example
    "xn--bcher-kva.example",
    "93.184.216.34",
    "2606:2800:220:1:248:1893:25c8:1946",
    "[2606:2800:220:1:248:1893:25c8:1946]",
]


@pytest.mark.parametrize("host", NOT_HOST_NAMES)
def test_the_rule_refuses_what_is_no_host_name(host):
    from superimap.platform.validation import host_problem

    assert host_problem(host)


@pytest.mark.parametrize("host", HOST_NAMES)
def test_the_rule_accepts_ip_addresses_and_host_names(host):
    from superimap.platform.validation import host_problem

    assert host_problem(host) is None


@pytest.mark.parametrize("field", ["imap_host", "smtp_host"])
@pytest.mark.parametrize("host", NOT_HOST_NAMES)
def test_the_api_refuses_what_is_no_host_name(api, plain_connection, field, host):
    r = api.put("/connections/PLAIN", {field: host})
    error = assert_error(r, 422, "validation_error")
    assert error["details"][0]["loc"][-1] == field
    plain_connection.refresh_from_db()
    assert plain_connection.imap_host == "imap.example.com" and plain_connection.smtp_host == ""
    plain_connection.delete()
    created = api.post("/connections", {"imap_provider_code": "PLAIN", field: host})
    assert_error(created, 422, "validation_error")


@pytest.mark.parametrize("host", HOST_NAMES)
def test_the_api_accepts_ip_addresses_and_host_names(api, plain_connection, host):
    r = api.put("/connections/PLAIN", {"imap_host": host, "smtp_host": host})
    assert r.status_code == 200, r.content


def _plain(partner: Partner, **fields) -> Connection:
    return Connection(partner=partner, provider=ImapProvider.objects.get(code="PLAIN"), **fields)


@pytest.mark.parametrize("field", ["imap_host", "smtp_host"])
@pytest.mark.parametrize("host", NOT_HOST_NAMES)
def test_the_dashboard_refuses_what_the_api_refuses(partner, field, host):
    connection = _plain(partner, **{"imap_host": "imap.example.com", field: host})
    with pytest.raises(ValidationError) as error:
        connection.full_clean()
    assert field in error.value.message_dict


def test_the_dashboards_connection_form_shows_the_host_rule(partner, django_user_model):
    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-boss-1")
    admin = Client()
    admin.force_login(boss, backend="django.contrib.auth.backends.ModelBackend")
    provider = ImapProvider.objects.get(code="PLAIN")
    form = {
        "partner": partner.id,
        "provider": provider.id,
        "imap_host": "imap.example.com\r\nX: 1",
        "imap_tls": "implicit",
        "imap_tls_verify": "on",
        "folders": "[]",
        "oauth_client_secret": "",
    }
    r = admin.post("/admin/partners/connection/add/", form)
    assert r.status_code == 200  # the form again, with the error
    errors = r.context["adminform"].form.errors
    assert "imap_host" in errors and "host name" in str(errors["imap_host"])
    assert len(errors["imap_host"]) == 1  # said once
    assert not Connection.objects.exists()


def test_the_dashboard_refuses_imap_without_tls_unless_opted_in(partner):
    connection = _plain(partner, imap_host="imap.example.com", imap_tls="none")
    with pytest.raises(ValidationError) as error:
        validate_connection(connection)
    assert "imap_allow_plaintext" in " ".join(error.value.message_dict["imap_tls"])
    connection.imap_allow_plaintext = True
    validate_connection(connection)


def test_the_dashboard_refuses_smtp_without_tls_outside_loopback(partner):
    connection = _plain(partner, imap_host="imap.example.com", smtp_tls="none")
    with pytest.raises(ValidationError) as error:
        validate_connection(connection)
    assert "smtp_tls" in error.value.message_dict


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks\u202e.example/x",
        "https://hooks\u3164.example/x",
        "https://user@a..b/x",
        "https://" + "a" * 64 + ".example/x",
    ],
)
def test_webhook_and_callback_urls_need_a_host_name_in_the_api_and_dashboard(api, partner, url):
    for field in ("new_mail_webhook", "success_url"):
        assert_error(api.put("/partner", {field: url}), 422)
        setattr(partner, field, url)
        with pytest.raises(ValidationError) as error:
            validate_partner(partner)
        assert field in error.value.message_dict
        partner.refresh_from_db()


def test_allowed_redirect_hosts_are_host_names(api, partner):
    r = api.put("/partner", {"allowed_redirect_hosts": ["ok.example", "a..b"]})
    assert_error(r, 422)
    r = api.put("/partner", {"allowed_redirect_hosts": ["ok.example", "b\u00fccher.example"]})
    assert r.status_code == 200, r.content
    partner.allowed_redirect_hosts = "ok.example,user@evil.example"
    with pytest.raises(ValidationError) as error:
        validate_partner(partner)
    assert "allowed_redirect_hosts" in error.value.message_dict


@pytest.mark.parametrize(
    "url", ["https://hooks\u202e.example/x", "https://a..b/x", "http://a_b.example/"]
)
def test_the_cli_refuses_a_webhook_whose_host_is_no_host_name(db, capsys, url):
    from superimap import cli, commands

    args = cli.build_parser().parse_args(["createpartner", "--name", "App", "--webhook", url])
    with pytest.raises(SystemExit) as exit_:
        commands.cmd_createpartner(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("superimap: --webhook: ")
    assert err.count("--webhook") == 1 and "The URL's host must" in err
    assert not Partner.objects.exists()
