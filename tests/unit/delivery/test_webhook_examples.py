"""docs/webhooks.md shows one example of every webhook kind, rendered by the real code: the
file must hold exactly what superimap.delivery.examples renders now, every kind the service
sends must be there, and each example's signatures must verify with the key and secret the
page gives."""

from __future__ import annotations

import json
import re

from devtools.testing.webhook_receiver import verify_spec_signature, verify_standard_webhook
from superimap.delivery import examples
from superimap.delivery.models import Delivery

BLOCK = re.compile(r"### `(\w+)`.*?```http\n(.*?)```\n\n```json\n(.*?)```", re.S)


def doc_examples() -> list[tuple[str, dict[str, str], str]]:
    part = examples.generated_part(examples.DOC.read_text())
    assert part is not None, "docs/webhooks.md lost its generated-examples markers"
    found = []
    for kind, head, body in BLOCK.findall(part):
        headers = dict(line.split(": ", 1) for line in head.strip().splitlines()[1:])
        found.append((kind, headers, body))
    return found


def test_docs_hold_what_the_code_renders_now():
    part = examples.generated_part(examples.DOC.read_text())
    assert part == examples.render(), (
        "docs/webhooks.md is out of date: run `python -m superimap.delivery.examples --write`"
    )


def test_every_kind_is_shown():
    shown = {kind for kind, _, _ in doc_examples()}
    assert shown == {*Delivery.Kind.values, "ping"}


def test_each_example_is_signed_by_the_documented_key_and_secret():
    docs = examples.DOC.read_text()
    assert examples.API_KEY in docs and examples.SECRET in docs
    listed = doc_examples()
    assert len(listed) == len(examples.examples())
    for kind, headers, body in listed:
        payload = json.loads(body)
        assert payload["event"] == kind
        # Sent compact: the signatures are over these bytes.
        raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        assert verify_spec_signature(payload, examples.API_KEY), kind
        assert verify_standard_webhook(headers, raw, examples.SECRET, now=examples.TIMESTAMP), kind
        assert not verify_standard_webhook(
            headers, raw + b" ", examples.SECRET, now=examples.TIMESTAMP
        )


def test_new_mail_examples_carry_the_documented_fields():
    bodies = [json.loads(b) for k, _, b in doc_examples() if k == "new_mail"]
    full, truncated, parsed = bodies
    for field in ("sha1", "envelope", "rfc822", "uid", "uid_validity", "folder", "size"):
        assert field in full
    assert truncated["truncated"] is True and "rfc822" not in truncated
    assert truncated["rfc822_url"].startswith(examples.PUBLIC_URL + "/api/v1/connections/")
    assert "rfc822" not in parsed and parsed["text"].startswith("Hi there!")
