"""The IMAP client's pure rules, without I/O: which refusals need a human, what a partial
fetch carried, how the login buckets fill and drain, and what a failed certificate says."""

from __future__ import annotations

import ssl

import pytest

from superimap.imap import Fetch, TaggedResponse
from superimap.imapclient import (
    LoginLimiter,
    PasswordAccount,
    TlsCertificateFailed,
    TokenBucket,
    refused_for_credentials,
)
from superimap.imapclient.messages import partial_body
from superimap.imapclient.ratelimit import LOOPBACK_LIMITS, PRIVATE_LIMITS, host_class
from superimap.platform.config import ConfigError, env_login_limits


@pytest.mark.parametrize(
    ("status", "code", "needs_a_human"),
    [
        ("NO", None, True),  # a plain NO: wrong password
        ("NO", ("AUTHENTICATIONFAILED",), True),
        ("NO", ("AUTHORIZATIONFAILED",), True),
        ("NO", ("EXPIRED",), True),
        ("NO", ("UNAVAILABLE",), False),  # RFC 5530 "not now" codes
        ("NO", ("unavailable",), False),
        ("NO", ("SERVERBUG",), False),
        ("NO", ("LIMIT",), False),
        ("NO", ("INUSE",), False),
        ("NO", ("OVERQUOTA",), False),
        ("BAD", None, False),  # our fault or the server's, not the credentials'
        ("BAD", ("AUTHENTICATIONFAILED",), False),
        ("OK", None, False),
    ],
)
def test_it_tells_refused_credentials_from_transient_refusals(status, code, needs_a_human):
    response = TaggedResponse("A1", status, code, "text")
    assert refused_for_credentials(response) is needs_a_human


@pytest.mark.parametrize(
    ("attributes", "body", "origin", "expected"),
    [
        ({"BODY[]<0>": b"abc"}, None, 0, b"abc"),
        ({"BODY[]<1048576>": b"tail"}, None, 1048576, b"tail"),
        ({"BODY[]<0>": "text"}, None, 0, b"text"),  # a quoted string, not a literal
        ({"BODY[]<5>": None}, None, 5, b""),  # NIL: past the end
        ({"BODY[]<0>": b"other"}, None, 5, None),  # another slice's answer
        ({}, None, 0, None),  # nothing about the body
        ({}, b"whole", 0, b"whole"),  # a server that ignores the range sends it all
        ({}, b"whole", 5, None),  # ... which only answers the first slice
        ({"BODY[]<0>": 17}, None, 0, None),  # not a body at all
    ],
)
def test_it_reads_the_slice_a_partial_fetch_returned(attributes, body, origin, expected):
    event = Fetch(seq=1, uid=9, body=body, attributes=attributes)
    assert partial_body(event, origin) == expected


def test_a_token_bucket_queues_callers_and_never_refills_past_its_burst():
    bucket = TokenBucket(rate=2.0, burst=2, now=0.0)
    # (now, seconds reserve() says to wait)
    steps = [(0.0, 0.0), (0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (1.0, 0.5), (100.0, 0.0)]
    assert [bucket.reserve(now) for now, _ in steps] == [wait for _, wait in steps]
    assert bucket.wait(100.0) == 0.0  # one token left after 100 s: the burst, minus one
    assert not bucket.full(100.0)
    assert bucket.full(100.5)


def test_waiting_takes_no_token():
    bucket = TokenBucket(rate=1.0, burst=1, now=0.0)
    assert bucket.reserve(0.0) == 0.0
    assert [bucket.wait(0.0), bucket.wait(0.0), bucket.wait(0.25)] == [1.0, 1.0, 0.75]
    assert bucket.reserve(1.0) == 0.0


def test_the_limiter_forgets_full_buckets_now_and_then():
    clock = [0.0]
    limiter = LoginLimiter(
        mailbox_burst=1, mailbox_interval=1.0, host_burst=1, host_rate=1.0, clock=lambda: clock[0]
    )
    for user_id in range(1001):
        limiter.mailbox_delay(user_id)
    clock[0] = 5.0  # every one of those buckets full again
    for user_id in range(2000, 2999):
        limiter.mailbox_delay(user_id)
    assert len(limiter.mailboxes) == 2000  # swept only when a new bucket meets 2,000
    limiter.mailbox_delay(2999)
    assert sorted(limiter.mailboxes) == list(range(2000, 3000))  # the full ones are gone


def test_the_limiter_forgets_the_buckets_full_again_when_asked():
    """What the engine does once a minute: an idle mailbox keeps no bucket once its last
    login's token is back; one still refilling (or with logins queued) keeps it."""
    clock = [0.0]
    limiter = LoginLimiter(
        mailbox_burst=2, mailbox_interval=30.0, host_burst=9, host_rate=1.0, clock=lambda: clock[0]
    )
    limiter.mailbox_delay(1)
    clock[0] = 20.0
    limiter.mailbox_delay(2)
    limiter.mailbox_delay(2)
    limiter.forget_full()
    assert sorted(limiter.mailboxes) == [1, 2]  # 1 refills at 30 s
    clock[0] = 31.0
    limiter.forget_full()
    assert sorted(limiter.mailboxes) == [2]  # 2 took both tokens at 20 s: full at 80 s
    assert limiter.mailbox_delay(2) == pytest.approx(19.0)  # as if never forgotten
    assert limiter.mailbox_delay(1) == 0.0
    limiter.mailbox_delay(1)
    assert limiter.mailbox_delay(1) == pytest.approx(30.0)  # a forgotten one starts full


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.3.4.5", "loopback"),
        ("::1", "loopback"),
        ("[::1]", "loopback"),
        ("localhost", "loopback"),
        ("LocalHost", "loopback"),
        ("imap.localhost", "loopback"),
        ("10.0.0.7", "private"),
        ("192.168.1.2", "private"),
        ("172.16.0.1", "private"),
        ("fd00::1", "private"),
        ("169.254.1.1", ""),  # link-local: not a server of one's own
        ("8.8.8.8", ""),
        ("imap.gmail.com", ""),
        ("localhost.example.com", ""),
    ],
)
def test_it_tells_loopback_and_private_hosts_by_their_written_name(host, kind):
    assert host_class(host) == kind


def test_each_host_has_its_own_bucket_with_its_own_limit():
    clock = [0.0]
    limiter = LoginLimiter(
        host_burst=3,
        host_rate=1.0,
        host_limits={"imap.gmail.com": (1, 0.5), "private": (2, 2.0)},
        clock=lambda: clock[0],
    )
    # (host, the waits of four logins at once)
    table = [
        ("imap.gmail.com", [0, 2, 4, 6]),  # its own: 1 at once, then one per 2 s
        ("IMAP.GMAIL.COM", [8, 10, 12, 14]),  # the same host, the same bucket
        ("imap.example.com", [0, 0, 0, 1]),  # the default: 3, then 1/s
        ("outlook.office365.com", [0, 0, 0, 1]),  # the default, a bucket of its own
        ("10.0.0.2", [0, 0, 0.5, 1]),  # "private" as set
        ("10.0.0.3", [0, 0, 0.5, 1]),  # per address, not for the class together
        ("127.0.0.1", [0, 0, 0, 0]),  # loopback's built-in limit (not set here)
    ]
    for host, waits in table:
        assert [limiter.host_delay(host) for _ in range(4)] == waits, host
    assert limiter.host_limit("localhost") == LOOPBACK_LIMITS
    assert LoginLimiter(host_limits={}).host_limit("192.168.0.9") == PRIVATE_LIMITS


@pytest.mark.parametrize(
    ("raw", "limits"),
    [
        ("", {}),
        ("imap.gmail.com=500/50", {"imap.gmail.com": (500, 50.0)}),
        (
            " IMAP.Example.com = 2_000 / 0.5 , loopback=100000/5000,",
            {"imap.example.com": (2000, 0.5), "loopback": (100000, 5000.0)},
        ),
        ("::1=10/1", {"::1": (10, 1.0)}),
        ("a=1/1,a=2/2", {"a": (2, 2.0)}),  # the last one wins
    ],
)
def test_imap_login_limits_reads_host_burst_rate_entries(monkeypatch, raw, limits):
    monkeypatch.setenv("IMAP_LOGIN_LIMITS", raw)
    assert env_login_limits("IMAP_LOGIN_LIMITS") == limits


@pytest.mark.parametrize(
    "raw",
    [
        "imap.gmail.com",
        "imap.gmail.com=500",
        "=500/50",
        "h=0/5",
        "h=5/0",
        "h=5/-1",
        "h=x/1",
        "h=5/nan",
        "h=5/inf",
        "h=1.5/2",
    ],
)
def test_a_bad_imap_login_limits_entry_names_the_variable_and_the_entry(monkeypatch, raw):
    monkeypatch.setenv("IMAP_LOGIN_LIMITS", f"ok.example=1/1,{raw}")
    with pytest.raises(ConfigError) as caught:
        env_login_limits("IMAP_LOGIN_LIMITS")
    assert str(caught.value).startswith("IMAP_LOGIN_LIMITS: ")
    assert repr(raw) in str(caught.value)


@pytest.mark.parametrize(
    ("verify_message", "names_imap_host"),
    [
        ("Hostname mismatch, certificate is not valid for 'mail.example'.", True),
        ("self-signed certificate in certificate chain", False),
        ("unable to get local issuer certificate", False),
    ],
)
def test_a_failed_certificate_names_the_fix(verify_message, names_imap_host):
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = verify_message
    error.verify_code = 62
    failed = TlsCertificateFailed("mail.example", error)
    assert isinstance(failed, ssl.SSLCertVerificationError)
    prefix = f"TLS certificate of mail.example not trusted ({verify_message})"
    assert failed.reason.startswith(prefix)
    assert "imap_tls_ca" in failed.reason and "imap_tls_verify" in failed.reason
    assert ("set imap_host" in failed.reason) is names_imap_host
    assert failed.verify_code == 62


def test_a_password_account_never_shows_its_password():
    account = PasswordAccount("imap.example.com", 993, "implicit", "alice", "s3cret-pw")
    assert "s3cret-pw" not in repr(account) and "s3cret-pw" not in str(account)
    assert "alice" in repr(account)
