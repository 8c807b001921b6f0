"""The signature verifiers of docs/webhooks.md (Python, Node.js, Ruby), run as written there
against a real `superimap web`: a receiver runs all three on every webhook it gets (a
`test-webhook` ping) and answers 200 only if each accepts both signatures; before and during
a secret rotation (two signatures in `webhook-signature`), with the old and the new secret.
Each refuses a changed body, a wrong key and a stale timestamp."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devtools.testing import free_port
from tests.helpers.processes import (
    ROOT,
    Processes,
    answers,
    migrated_sqlite,
    run_cli,
    superimap_env,
    wait_until,
)

DOC = ROOT / "docs" / "webhooks.md"
LANGUAGES = {"python": "python3", "javascript": "node", "ruby": "ruby"}

# Each verifier from the doc, followed by a few lines that feed it a webhook: the raw body
# on stdin, the headers and keys in the environment.
HARNESS = {
    "python": """
import os, sys
body = sys.stdin.buffer.read()
headers = {k: os.environ["H_" + k.upper().replace("-", "_")] for k in
           ("webhook-id", "webhook-timestamp", "webhook-signature")}
ok = lambda b: "OK" if b else "BAD"
print("signature", ok(verify_signature(body, os.environ["API_KEY"])),
      "webhook-signature", ok(verify_webhook_signature(body, headers, os.environ["SECRET"])))
""",
    "javascript": """
const body = require("fs").readFileSync(0);
const headers = {};
for (const k of ["webhook-id", "webhook-timestamp", "webhook-signature"])
  headers[k] = process.env["H_" + k.toUpperCase().replace(/-/g, "_")];
const ok = (b) => (b ? "OK" : "BAD");
console.log("signature", ok(verifySignature(body, process.env.API_KEY)),
  "webhook-signature", ok(verifyWebhookSignature(body, headers, process.env.SECRET)));
""",
    "ruby": """
body = STDIN.binmode.read
names = %w[webhook-id webhook-timestamp webhook-signature]
headers = names.to_h { |k| [k, ENV["H_" + k.upcase.tr("-", "_")]] }
ok = ->(b) { b ? "OK" : "BAD" }
spec = ok.(verify_signature(body, ENV["API_KEY"]))
standard = ok.(verify_webhook_signature(body, headers, ENV["SECRET"]))
puts "signature #{spec} webhook-signature #{standard}"
""",
}


def doc_verifiers() -> dict[str, str]:
    text = DOC.read_text()
    found = {}
    for language in LANGUAGES:
        blocks = re.findall(rf"```{language}\n(.*?)```", text, re.S)
        assert blocks, f"no {language} verifier in docs/webhooks.md"
        found[language] = blocks[0]
    return found


def write_verifiers(folder: Path) -> dict[str, list[str]]:
    suffix = {"python": "py", "javascript": "js", "ruby": "rb"}
    commands = {}
    for language, code in doc_verifiers().items():
        path = folder / f"verify.{suffix[language]}"
        path.write_text(code + HARNESS[language])
        commands[language] = [LANGUAGES[language], str(path)]
    return commands


def run_verifiers(commands, body: bytes, headers, api_key: str, secret: str) -> dict[str, str]:
    env = dict(os.environ, API_KEY=api_key, SECRET=secret)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        env["H_" + name.upper().replace("-", "_")] = headers.get(name, "")
    results = {}
    for language, command in commands.items():
        done = subprocess.run(command, input=body, env=env, capture_output=True, timeout=30)
        results[language] = (done.stdout + done.stderr).decode().strip()
    return results


ALL_OK = "signature OK webhook-signature OK"


@pytest.fixture
def verifiers(tmp_path):
    for tool in ("node", "ruby"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: scripts/install-system-deps.sh installs it")
    return write_verifiers(tmp_path)


def test_verifiers_accept_what_the_service_signs_and_refuse_changes(tmp_path, verifiers):
    received: list[dict] = []
    keys = {}

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            results = run_verifiers(verifiers, body, headers, keys["api_key"], keys["secret"])
            received.append({"body": body, "headers": headers, "results": results})
            accepted = all(r == ALL_OK for r in results.values())
            self.send_response(200 if accepted else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver_port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", receiver_port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = superimap_env(migrated_sqlite(tmp_path / "db.sqlite3"), tmp_path)
    exported = run_cli(
        env,
        "createpartner",
        "--name",
        "My app",
        "--export",
        "--webhook",
        f"http://127.0.0.1:{receiver_port}/webhook",
    )
    values = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in exported.splitlines()
        if line.startswith("export ")
    )
    keys.update(api_key=values["API_KEY"], secret=values["WEBHOOK_SECRET"])
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v1/partner"

    def call(path: str, **fields) -> dict:
        request = urllib.request.Request(
            f"{base}/{path}",
            data=json.dumps(fields).encode(),
            method="POST",
            headers={"x-api-key": keys["api_key"], "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())

    try:
        with Processes(tmp_path) as procs:
            web = procs.start(env, "web", "--port", str(port))
            wait_until(lambda: answers(port) or web.poll() is not None, 30, "the web process")
            for kind in ("new_mail", "user_connected"):
                answer = call("test-webhook", kind=kind)
                assert answer["status_code"] == 200, (answer, received[-1]["results"])
                assert received[-1]["results"] == dict.fromkeys(LANGUAGES, ALL_OK)
                assert json.loads(received[-1]["body"])["webhook_kind"] == kind
            # A rotation's grace period: two signatures; the old secret and the new one pass.
            old_secret = keys["secret"]
            new_secret = call("rotate-secret", grace_seconds=3600)["webhook_secret"]
            for secret in (old_secret, new_secret):
                keys["secret"] = secret
                answer = call("test-webhook", kind="new_mail")
                assert len(received[-1]["headers"]["webhook-signature"].split()) == 2
                assert answer["status_code"] == 200, received[-1]["results"]
    finally:
        server.shutdown()
        server.server_close()

    last = received[-1]
    body, headers = last["body"], last["headers"]
    assert run_verifiers(verifiers, body, headers, keys["api_key"], new_secret) == dict.fromkeys(
        LANGUAGES, ALL_OK
    )
    changed = body.replace(b'"webhook_kind":"new_mail"', b'"webhook_kind":"new_mall"')
    assert changed != body
    assert run_verifiers(verifiers, changed, headers, keys["api_key"], new_secret) == dict.fromkeys(
        LANGUAGES,
        "signature OK webhook-signature BAD",  # the body signature covers sha1 only
    )
    assert run_verifiers(verifiers, body, headers, "wrong-key", new_secret) == dict.fromkeys(
        LANGUAGES, "signature BAD webhook-signature OK"
    )
    stale = dict(headers, **{"webhook-timestamp": str(int(time.time()) - 3600)})
    assert run_verifiers(verifiers, body, stale, keys["api_key"], new_secret) == dict.fromkeys(
        LANGUAGES, "signature OK webhook-signature BAD"
    )
