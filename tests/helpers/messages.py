"""Sample raw messages (MIME shapes seen in the wild) for content tests."""

from __future__ import annotations

import base64

CRLF = b"\r\n"


def msg(*lines: bytes | str) -> bytes:
    return CRLF.join(line.encode("utf-8") if isinstance(line, str) else line for line in lines)


NESTED = msg(
    "Subject: nested",
    "MIME-Version: 1.0",
    'Content-Type: multipart/mixed; boundary="outer"',
    "",
    "--outer",
    'Content-Type: multipart/related; boundary="rel"',
    "",
    "--rel",
    'Content-Type: multipart/alternative; boundary="alt"',
    "",
    "--alt",
    "Content-Type: text/plain; charset=utf-8",
    "",
    "plain body",
    "--alt",
    "Content-Type: text/html; charset=utf-8",
    "",
    "<p>html body <img src=cid:logo@x></p>",
    "--alt--",
    "--rel",
    "Content-Type: image/png",
    "Content-ID: <logo@x>",
    "Content-Disposition: inline",
    "Content-Transfer-Encoding: base64",
    "",
    base64.b64encode(b"\x89PNG" + bytes(96)).decode(),
    "--rel--",
    "--outer",
    'Content-Type: application/pdf; name="report.pdf"',
    'Content-Disposition: attachment; filename="report.pdf"',
    "Content-Transfer-Encoding: base64",
    "",
    base64.b64encode(b"%PDF-1.4" + bytes(1000)).decode(),
    "--outer",
    "Content-Type: message/rfc822",
    "",
    "Subject: forwarded",
    "",
    "inner body",
    "--outer--",
)


WINMAIL = msg(
    "Subject: from Outlook",
    'Content-Type: multipart/mixed; boundary="w"',
    "",
    "--w",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "See attached.",
    "--w",
    'Content-Type: application/ms-tnef; name="winmail.dat"',
    'Content-Disposition: attachment; filename="winmail.dat"',
    "Content-Transfer-Encoding: base64",
    "",
    base64.b64encode(b"\x78\x9f\x3e\x22" + bytes(200)).decode(),
    "--w--",
)
