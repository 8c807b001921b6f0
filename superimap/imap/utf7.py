"""Modified UTF-7 for mailbox names (RFC 3501 section 5.1.3)."""

from __future__ import annotations

import base64


def encode_mailbox_name(name: str) -> str:
    """Encode a mailbox name: printable ASCII stays, ``&`` becomes ``&-``, the rest base64."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            encoded = base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{encoded}-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_mailbox_name(name: str) -> str:
    """Decode a modified UTF-7 mailbox name; raises ValueError on malformed input."""
    out: list[str] = []
    pos = 0
    while pos < len(name):
        amp = name.find("&", pos)
        if amp < 0:
            out.append(name[pos:])
            break
        out.append(name[pos:amp])
        dash = name.find("-", amp)
        if dash < 0:
            raise ValueError("unterminated modified UTF-7 run")
        chunk = name[amp + 1 : dash]
        if chunk:
            padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
            out.append(base64.b64decode(padded).decode("utf-16-be"))
        else:
            out.append("&")
        pos = dash + 1
    return "".join(out)
