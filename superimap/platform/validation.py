"""Input rules shared by the API, the dashboard (model validation) and the CLI.

One function per rule, so the three front ends cannot drift apart: what the API refuses,
the dashboard and `superimap createpartner` refuse too, with the same words.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from urllib.parse import urlsplit

import idna
from django.core.exceptions import ValidationError

MAX_HOST_LENGTH = 253
# RFC 1123 labels (letters, digits, hyphens; not starting or ending with a hyphen), once a
# Unicode name is encoded as IDNA A-labels (xn--...).
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC = re.compile(r"[0-9]+")
# Unicode Default_Ignorable_Code_Point (DerivedCoreProperties.txt): characters that render
# as nothing, such as the Hangul filler U+3164, soft hyphen, variation selectors and tags.
DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
# Control, format (bidi overrides, zero-width), surrogate, private-use and unassigned
# characters, and line/paragraph separators.
INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def is_default_ignorable(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in DEFAULT_IGNORABLE)


def invisible_char_problem(value: str) -> str | None:
    """Why ``value`` cannot be shown as is in dashboards and logs (None if it can): it holds
    a control, bidi, zero-width or other invisible (default-ignorable) character."""
    for char in value:
        if unicodedata.category(char) in INVISIBLE_CATEGORIES or is_default_ignorable(char):
            return (
                "must not contain control, bidi, zero-width or other invisible characters "
                f"(U+{ord(char):04X})"
            )
    return None


def _ip_address(host: str) -> bool:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if "%" in bare:  # an IPv6 zone (fe80::1%eth0) names a local interface
        return False
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return False
    # Brackets belong around IPv6 only.
    return bare == host or isinstance(address, ipaddress.IPv6Address)


def host_problem(host: str) -> str | None:
    """Why ``host`` is not a host name (None if it is): an IP address (IPv6 also in
    brackets) or an RFC 1123 host name, whose Unicode labels encode as IDNA (2008, UTS 46).

    Refused: empty, spaces and line breaks, bidi and other invisible characters,
    ``user@host``, ``host:port``, URLs, empty labels (``a..b``, ``.a``), labels over 63
    characters, names over 253, and an all-numeric last label that is no IP address
    (``127.1``). One trailing dot (a fully qualified name) is allowed.
    """
    if not host:
        return "must not be empty"
    if len(host) > MAX_HOST_LENGTH:
        return f"must be at most {MAX_HOST_LENGTH} characters"
    if _ip_address(host):
        return None
    name = host[:-1] if host.endswith(".") else host
    if name.isascii():
        ascii_name = name.lower()
    else:
        if invisible_char_problem(name) or any(c.isspace() for c in name):
            return "must be a host name (letters, digits, hyphens and dots) or an IP address"
        try:
            ascii_name = idna.encode(name, uts46=True).decode("ascii")
            # getaddrinfo and the standard library encode names with the older IDNA 2003
            # codec; a name it refuses would fail there (and did, as a 500).
            name.encode("idna")
        except (idna.IDNAError, UnicodeError, ValueError):
            return "is not a valid international (IDNA) host name"
    labels = ascii_name.split(".")
    for label in labels:
        if not label:
            return "must not have an empty label (nothing between two dots, or at an end)"
        if len(label) > 63:
            return "must not have a label over 63 characters"
        if not _LABEL.fullmatch(label):
            return "must be a host name (letters, digits, hyphens and dots) or an IP address"
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError, ValueError):
                return "is not a valid international (IDNA) host name"
    if _NUMERIC.fullmatch(labels[-1]):
        return "must be a host name or a valid IP address (its last label is all digits)"
    if len(ascii_name) > MAX_HOST_LENGTH:
        return f"must be at most {MAX_HOST_LENGTH} characters once encoded"
    return None


def url_host_problem(url: str) -> str | None:
    """Why the host of an http(s) URL is not a host name (None if it is, or for "")."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "The URL must be an http(s) URL with a host name (and a valid port)"
    if not host:
        return "The URL must be an http(s) URL with a host name"
    if problem := host_problem(host):
        return f"The URL's host {problem}"
    return None


def validate_host_name(value: str) -> None:
    """Django validator (model fields, admin forms) for host_problem()."""
    if value and (problem := host_problem(value)):
        raise ValidationError(f"The host {problem}.", code="invalid_host")
