"""A real HTTP webhook receiver that records requests and checks both signature schemes.

In tests::

    receiver = WebhookReceiver(api_key="key", whsec_secret="whsec_...", responses=[(500, "")])
    await receiver.start()
    ...  # point the delivery worker at receiver.url
    [event] = await receiver.wait_for(1)
    assert event.valid_spec_signature and event.valid_standard_signature
    await receiver.stop()

From the command line (``superimap webhook-inspector``) it prints one line per event.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import errno
import hashlib
import hmac
import json
import math
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from superimap.helpformat import DefaultsHelpFormatter

STANDARD_WEBHOOK_TOLERANCE = 5 * 60


# --- Signatures ------------------------------------------------------------------------------


def ruby_to_s(value: Any) -> str | None:
    """Render a parsed JSON scalar as Ruby's ``"#{value}"`` would; None for arrays/objects."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, float):
        return _ruby_float_to_s(value)
    return None


def _ruby_float_to_s(value: float) -> str:
    # Ruby's Float#to_s: shortest round-trip digits, fixed notation for 1e-4 <= |x| < 1e16.
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    decpt = len(digit_tuple) + exponent  # position of the decimal point relative to digits
    if value == 0:
        decpt = 1
    prefix = "-" if sign else ""
    if 0 < decpt <= 16:
        whole = digits[:decpt].ljust(decpt, "0")
        return f"{prefix}{whole}.{digits[decpt:] or '0'}"
    if -4 < decpt <= 0:
        return f"{prefix}0.{'0' * -decpt}{digits}"
    return f"{prefix}{digits[0]}.{digits[1:] or '0'}e{decpt - 1:+03d}"


def spec_signature(api_key: str, timestamp: Any, sha1: Any) -> str | None:
    """The spec's ``OpenSSL::HMAC.hexdigest(sha256, api_key, "#{timestamp}#{sha1}")``."""
    rendered_timestamp, rendered_sha1 = ruby_to_s(timestamp), ruby_to_s(sha1)
    if rendered_timestamp is None or rendered_sha1 is None:
        return None
    message = f"{rendered_timestamp}{rendered_sha1}".encode()
    return hmac.new(api_key.encode(), message, hashlib.sha256).hexdigest()


def verify_spec_signature(payload: Mapping[str, Any], api_key: str) -> bool:
    """Check ``payload['signature']`` exactly as the spec's "Webhook Security" Ruby snippet."""
    actual = payload.get("signature")
    expected = spec_signature(api_key, payload.get("timestamp"), payload.get("sha1"))
    if not isinstance(actual, str) or expected is None:
        return False
    return hmac.compare_digest(expected.encode(), actual.encode())


def verify_standard_webhook(
    headers: Mapping[str, str],
    raw_body: bytes,
    secret: str,
    *,
    now: float | None = None,
    tolerance: int = STANDARD_WEBHOOK_TOLERANCE,
) -> bool:
    """Check the Standard Webhooks headers (``webhook-id/-timestamp/-signature``)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        return False
    try:
        sent_at = int(timestamp)
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (ValueError, binascii.Error):
        return False
    if abs((time.time() if now is None else now) - sent_at) > tolerance:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + raw_body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for candidate in signatures.split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, signature.encode()):
            return True
    return False


# --- Receiver --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hang:
    """Scripted reply: wait ``seconds`` (forever if None), then answer ``status``."""

    seconds: float | None = None
    status: int = 200
    body: str = "OK"


HANG = Hang()
# (status, body), or (status, body, headers) for answers such as 429 with Retry-After.
Reply = tuple[int, str] | tuple[int, str, dict[str, str]] | Hang


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    received_at: float
    """``time.monotonic()`` when the request arrived."""
    valid_spec_signature: bool | None = None
    """None when the receiver has no API key (or the body is not a JSON object)."""
    valid_standard_signature: bool | None = None
    """None when the receiver has no ``whsec_`` secret."""
    reply: Reply | None = field(default=None, repr=False)
    answered_at: float | None = None
    """``time.monotonic()`` when the reply was ready (after a scripted wait)."""


Responses = Sequence[Reply] | Callable[[ReceivedRequest], Reply]


class WebhookReceiver:
    """An aiohttp server on 127.0.0.1 that records every request in ``received``.

    ``responses`` scripts the replies: a list is used one item per request (then 200 "OK"),
    a callable is asked for each request. An item is ``(status, body)`` or a :class:`Hang`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        whsec_secret: str | None = None,
        responses: Responses | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.api_key = api_key
        self.whsec_secret = whsec_secret
        self.port = port
        self.received: list[ReceivedRequest] = []
        self.on_request: Callable[[ReceivedRequest], None] | None = None
        self._responses = responses
        self._replies_given = 0
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown_timeout: stop() must not wait for handlers that hang on purpose.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        sock = socket.create_server((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # cancels hanging handlers
            self._runner = None

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Wait until at least ``count`` requests arrived; return the first ``count``."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received[:count]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        event = ReceivedRequest(
            method=request.method,
            path=request.path_qs,
            headers=dict(request.headers),
            body=body,
            json=_parse_json(body),
            received_at=time.monotonic(),
        )
        if self.api_key is not None:
            event.valid_spec_signature = isinstance(event.json, dict) and verify_spec_signature(
                event.json, self.api_key
            )
        if self.whsec_secret is not None:
            event.valid_standard_signature = verify_standard_webhook(
                event.headers, body, self.whsec_secret
            )
        event.reply = self._next_reply(event)
        async with self._arrived:
            self.received.append(event)
            self._arrived.notify_all()
        if self.on_request is not None:
            self.on_request(event)
        response = await _respond(event.reply)
        event.answered_at = time.monotonic()
        return response

    def _next_reply(self, event: ReceivedRequest) -> Reply:
        if callable(self._responses):
            return self._responses(event)
        index, self._replies_given = self._replies_given, self._replies_given + 1
        if self._responses is not None and index < len(self._responses):
            return self._responses[index]
        return (200, "OK")


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


async def _respond(reply: Reply) -> web.Response:
    if isinstance(reply, Hang):
        if reply.seconds is None:
            await asyncio.Event().wait()  # until the client gives up or the receiver stops
        else:
            await asyncio.sleep(reply.seconds)
        reply = (reply.status, reply.body)
    status, text, *rest = reply
    return web.Response(status=status, text=text, headers=rest[0] if rest else None)


# --- Command line ----------------------------------------------------------------------------


def describe(event: ReceivedRequest) -> str:
    """One line for a received webhook: kind, user tag, subject and signature checks."""
    payload = event.json if isinstance(event.json, dict) else {}
    kind = payload.get("event") or _guess_kind(payload) or event.path
    envelope = payload.get("envelope")
    subject = envelope.get("subject") if isinstance(envelope, dict) else None
    checks = []
    for name, valid in (
        ("signature", event.valid_spec_signature),
        ("webhook-signature", event.valid_standard_signature),
    ):
        if valid is not None:
            checks.append(f"{name} {'OK' if valid else 'BAD'}")
    if kind == "ping":  # POST /api/v1/partner/test-webhook: no user
        parts = [str(kind), f"for={payload.get('webhook_kind')!r}"]
    else:
        parts = [str(kind), f"user_tag={payload.get('user_tag')!r}"]
    if subject is not None:
        parts.append(f"subject={subject!r}")
    return "  ".join(parts + checks)


def _guess_kind(payload: Mapping[str, Any]) -> str | None:
    if "rfc822" in payload or "envelope" in payload:
        return "new_mail"
    if "email" in payload:
        return "user_connected"
    if "error" in payload and "status" in payload:
        return "user_error"
    if "status" in payload:
        return "user_recovered"
    if "user_tag" in payload:
        return "user_disconnected"
    return None


NOT_CHECKED = {"--api-key": "'signature'", "--secret": "'webhook-signature'"}


async def _serve(args: argparse.Namespace) -> None:
    receiver = WebhookReceiver(
        api_key=args.api_key, whsec_secret=args.secret, port=args.port, host=args.host
    )
    receiver.on_request = lambda event: print(describe(event), flush=True)
    await receiver.start()
    print(f"Listening on {receiver.url}/ (Ctrl-C to stop)", flush=True)
    for option, checks in (("--api-key", args.api_key), ("--secret", args.secret)):
        if checks is None:
            print(f"  not checking {NOT_CHECKED[option]}: no {option} given", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await receiver.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="superimap webhook-inspector",
        description="Receive SuperIMAP webhooks on 127.0.0.1 and check their signatures.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on")
    parser.add_argument("--api-key", help="the partner API key, to check 'signature'")
    parser.add_argument("--secret", help="the whsec_ secret, to check 'webhook-signature'")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(
            f"superimap webhook-inspector: port {args.port} is in use (an inspector running "
            "already?); stop it or choose another --port",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
