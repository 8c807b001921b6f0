"""The webhook receiver records requests, scripts replies and checks signatures.

Signatures are computed here independently with hmac, from the spec's Ruby snippet and the
Standard Webhooks reference.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.testing.webhook_receiver import (
    HANG,
    Hang,
    ReceivedRequest,
    WebhookReceiver,
    describe,
    main,
    ruby_to_s,
    verify_spec_signature,
    verify_standard_webhook,
)

API_KEY = "partner-api-key"
KEY_BYTES = b"0123456789abcdef0123456789abcdef"
WHSEC = "whsec_" + base64.b64encode(KEY_BYTES).decode()

ROOT = Path(__file__).resolve().parents[2]


def signed_payload(subject: str = "Hello", timestamp: int | None = None) -> dict[str, Any]:
    rfc822 = f"Subject: {subject}\r\n\r\nbody\r\n"
    sha1 = hashlib.sha1(rfc822.encode()).hexdigest()
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(API_KEY.encode(), f"{timestamp}{sha1}".encode(), "sha256").hexdigest()
    return {
        "event": "new_mail",
        "timestamp": timestamp,
        "sha1": sha1,
        "user_tag": "tag-1",
        "envelope": {"subject": subject},
        "rfc822": rfc822,
        "signature": signature,
    }


def standard_headers(
    raw: bytes, msg_id: str = "evt_1", timestamp: int | None = None
) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{msg_id}.{timestamp}.".encode() + raw
    signature = base64.b64encode(hmac.new(KEY_BYTES, signed, "sha256").digest()).decode()
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


async def post(
    url: str, raw: bytes, headers: dict[str, str] | None = None, timeout: float = 5
) -> int:
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        async with session.post(url, data=raw, headers=headers or {}) as response:
            await response.read()
            return response.status


def receive(
    bodies: list[tuple[bytes, dict[str, str]]], **receiver_args: Any
) -> tuple[list[int], list[ReceivedRequest]]:
    async def scenario() -> tuple[list[int], list[ReceivedRequest]]:
        async with WebhookReceiver(**receiver_args) as receiver:
            statuses = [await post(receiver.url + "/hook", raw, h) for raw, h in bodies]
            return statuses, receiver.received

    return asyncio.run(scenario())


def test_it_accepts_both_signatures() -> None:
    raw = json.dumps(signed_payload()).encode()

    statuses, [event] = receive([(raw, standard_headers(raw))], api_key=API_KEY, whsec_secret=WHSEC)

    assert statuses == [200]
    assert event.method == "POST" and event.path == "/hook"
    assert event.body == raw and event.json == json.loads(raw)
    assert event.headers["webhook-id"] == "evt_1"
    assert event.valid_spec_signature is True
    assert event.valid_standard_signature is True


def test_it_flags_a_tampered_body() -> None:
    payload = signed_payload()
    raw = json.dumps(payload).encode()
    headers = standard_headers(raw)
    other_subject = json.dumps({**payload, "envelope": {"subject": "Evil"}}).encode()
    other_sha1 = json.dumps({**payload, "sha1": "0" * 40}).encode()

    _, events = receive(
        [(other_subject, headers), (other_sha1, headers)], api_key=API_KEY, whsec_secret=WHSEC
    )

    assert [e.valid_standard_signature for e in events] == [False, False]
    # The spec's signature covers only timestamp and sha1, not the rest of the body.
    assert [e.valid_spec_signature for e in events] == [True, False]


def test_it_leaves_checks_unset_without_keys() -> None:
    _, [event] = receive([(b"not json", {})])
    assert event.json is None
    assert event.valid_spec_signature is None and event.valid_standard_signature is None


def test_spec_signature_uses_ruby_interpolation_of_the_timestamp() -> None:
    payload = signed_payload()
    assert verify_spec_signature(payload, API_KEY)
    assert not verify_spec_signature(payload, "other-key")
    assert not verify_spec_signature({**payload, "timestamp": payload["timestamp"] + 1}, API_KEY)
    assert not verify_spec_signature({**payload, "signature": None}, API_KEY)
    as_float = {**payload, "timestamp": 1700000000.5}
    as_float["signature"] = hmac.new(
        API_KEY.encode(), f"1700000000.5{payload['sha1']}".encode(), "sha256"
    ).hexdigest()
    assert verify_spec_signature(as_float, API_KEY)


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        (1700000000, "1700000000"),
        ("1700000000", "1700000000"),
        (None, ""),
        (True, "true"),
        (100.0, "100.0"),
        (1700000000.25, "1700000000.25"),
        (1e15, "1000000000000000.0"),
        (1e16, "1.0e+16"),
        (0.0001, "0.0001"),
        (0.00001, "1.0e-05"),
        (-2.5, "-2.5"),
        (0.0, "0.0"),
        ([1], None),
    ],
)
def test_ruby_to_s(value: Any, rendered: str | None) -> None:
    assert ruby_to_s(value) == rendered


def test_standard_webhook_checks_time_secret_and_signature_list() -> None:
    raw = b'{"a": 1}'
    now = int(time.time())
    headers = standard_headers(raw, timestamp=now)
    assert verify_standard_webhook(headers, raw, WHSEC)
    upper = {name.upper(): value for name, value in headers.items()}
    assert verify_standard_webhook(upper, raw, WHSEC)
    several = {**headers, "webhook-signature": "v1,bm90IGl0 v2,x " + headers["webhook-signature"]}
    assert verify_standard_webhook(several, raw, WHSEC)
    assert not verify_standard_webhook(headers, raw + b" ", WHSEC)
    assert not verify_standard_webhook(headers, raw, "whsec_" + base64.b64encode(b"x").decode())
    assert not verify_standard_webhook({**headers, "webhook-id": "evt_2"}, raw, WHSEC)
    assert not verify_standard_webhook(standard_headers(raw, timestamp=now - 301), raw, WHSEC)
    assert not verify_standard_webhook(standard_headers(raw, timestamp=now + 301), raw, WHSEC)
    assert verify_standard_webhook(standard_headers(raw, timestamp=now - 250), raw, WHSEC)
    assert not verify_standard_webhook({}, raw, WHSEC)


def test_scripted_replies_then_200() -> None:
    statuses, events = receive([(b"{}", {})] * 3, responses=[(500, "boom"), (403, "no")])
    assert statuses == [500, 403, 200]
    assert len(events) == 3


def test_replies_from_a_callable() -> None:
    def by_payload(request: ReceivedRequest) -> tuple[int, str]:
        return (201 if request.json == {"n": 1} else 202, "")

    statuses, _ = receive([(b'{"n": 1}', {}), (b'{"n": 2}', {})], responses=by_payload)
    assert statuses == [201, 202]


def test_hang_makes_the_client_time_out_but_is_recorded() -> None:
    async def scenario() -> None:
        async with WebhookReceiver(responses=[HANG]) as receiver:
            with pytest.raises(asyncio.TimeoutError):
                await post(receiver.url, b"{}", timeout=0.3)
            [event] = await receiver.wait_for(1, timeout=1)
            assert event.json == {}
            assert await post(receiver.url, b"{}") == 200  # the next one is answered

    asyncio.run(scenario())


def test_hang_for_a_while_then_answer() -> None:
    async def scenario() -> None:
        async with WebhookReceiver(responses=[Hang(seconds=0.2, status=204, body="")]) as receiver:
            started = time.monotonic()
            assert await post(receiver.url, b"{}") == 204
            assert time.monotonic() - started >= 0.2
            assert receiver.received[0].received_at >= started

    asyncio.run(scenario())


def test_describe_prints_kind_tag_subject_and_checks() -> None:
    raw = json.dumps(signed_payload("Quarterly report")).encode()
    _, [good] = receive([(raw, standard_headers(raw))], api_key=API_KEY, whsec_secret=WHSEC)
    _, [bad] = receive([(raw, {})], api_key="wrong", whsec_secret=WHSEC)

    assert describe(good) == (
        "new_mail  user_tag='tag-1'  subject='Quarterly report'  signature OK  webhook-signature OK"
    )
    assert describe(bad).endswith("signature BAD  webhook-signature BAD")


def test_main_has_a_help() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0


def test_the_inspector_says_which_signature_it_cannot_check() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.testing.webhook_receiver", "--port", "0"]
        + ["--api-key", "k"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,  # devtools/ is in the checkout, not in the installed package
    )
    try:
        assert proc.stdout.readline().startswith("Listening on http://127.0.0.1:")
        assert proc.stdout.readline().strip() == (
            "not checking 'webhook-signature': no --secret given"
        )
    finally:
        proc.kill()
        proc.wait(5)
