"""Which folder a mailbox session watches (issue 8 item 1).

The original watched Gmail's ``[Gmail]/All Mail`` and fell back to INBOX, so mail that
skips the inbox (filters, labels, archived on arrival) and the user's own sent mail were
seen. The rule, after login and before SELECT:

1. the mailbox flagged ``\\All`` (RFC 6154 SPECIAL-USE: Gmail, Dovecot with a virtual or
   special-use All folder);
2. else a folder named like Gmail's (``[Gmail]/All Mail``, ``[Google Mail]/All Mail``: the
   original's fallback, for servers that do not flag it);
3. else the configured folder (the provider's, INBOX by default).

A provider configured with a folder other than INBOX keeps that folder: no LIST at all.

A user (else its connection) may name the folders to watch instead (``folders``: names or
special-use flags such as ``\\Junk``; design.md 4.10): resolve_folders() maps them to
the account's folder names with one LIST; the first is watched by IDLE, the others by
NOTIFY or STATUS polling (engine/session.py).
The checkpoint (UIDVALIDITY, last UID) belongs to one folder: when the chosen folder is
not the checkpoint's (an upgrade from INBOX to All Mail), the session takes a new baseline
there instead of applying one folder's UIDs to another.
"""

from __future__ import annotations

from collections.abc import Iterable

from superimap.imap import Event, MailboxListing
from superimap.imapclient import CommandFailed

ALL_MAIL_NAMES = ("[Gmail]/All Mail", "[Google Mail]/All Mail")
UNSELECTABLE = frozenset({"\\NOSELECT", "\\NONEXISTENT"})


def pick_folder(listings: Iterable[Event], default: str = "INBOX") -> str:
    """The folder to watch, given the LIST responses of the account."""
    selectable = [
        event
        for event in listings
        if isinstance(event, MailboxListing)
        and not UNSELECTABLE & {attribute.upper() for attribute in event.attributes}
    ]
    for listing in selectable:
        if "\\ALL" in (attribute.upper() for attribute in listing.attributes):
            return listing.name
    names = {listing.name for listing in selectable}
    for name in ALL_MAIL_NAMES:
        if name in names:
            return name
    return default


async def choose_folder(conn, configured: str) -> str:
    """After login, before SELECT: the folder this session watches (see the module doc).

    Where the server advertises SPECIAL-USE, ``LIST (SPECIAL-USE) "" "*"`` lists only the
    special-use mailboxes (small, however many folders the account has), and when none is
    \\All, ``LIST "" "*All Mail"`` looks for the fallback names. Otherwise one plain
    ``LIST "" "*"``: its answers carry the flags where the server has them and the names.
    """
    if configured.upper() != "INBOX":
        return configured
    try:
        if "SPECIAL-USE" in conn.protocol.capabilities:
            untagged, _ = await conn.command(*conn.protocol.list_mailboxes(special_use_only=True))
            chosen = pick_folder(untagged, "")
            if chosen:
                return chosen
            untagged, _ = await conn.command(*conn.protocol.list_mailboxes("", "*All Mail"))
        else:
            untagged, _ = await conn.command(*conn.protocol.list_mailboxes())
    except CommandFailed:
        return configured  # a server that refuses LIST still has an INBOX
    return pick_folder(untagged, configured)


def is_flag(spec: str) -> bool:
    return spec.startswith("\\")


def match_folders(listings: Iterable[Event], specs: Iterable[str]) -> tuple[list[str], list[str]]:
    """(folder names to watch, in the order of ``specs`` without repeats; the specs that
    match no selectable folder of the account)."""
    selectable = [
        event
        for event in listings
        if isinstance(event, MailboxListing)
        and not UNSELECTABLE & {attribute.upper() for attribute in event.attributes}
    ]
    names: list[str] = []
    missing: list[str] = []
    for spec in specs:
        if spec.upper() in ("INBOX", "\\INBOX"):
            found = "INBOX"
        elif is_flag(spec):
            flag = spec.upper()
            found = next(
                (
                    listing.name
                    for listing in selectable
                    if flag in {attribute.upper() for attribute in listing.attributes}
                ),
                None,
            )
        else:
            found = next((listing.name for listing in selectable if listing.name == spec), None)
        if found is None:
            missing.append(spec)
        elif found not in names:
            names.append(found)
    return names, missing


async def resolve_folders(
    conn, specs: tuple[str, ...], configured: str
) -> tuple[list[str], list[str]]:
    """The folders a session watches, primary first, and the specs that named nothing.
    Without ``specs``: the one folder of choose_folder(). If nothing matches: INBOX."""
    if not specs:
        return [await choose_folder(conn, configured)], []
    try:
        untagged, _ = await conn.command(*conn.protocol.list_mailboxes())
    except CommandFailed:
        untagged = []
    names, missing = match_folders(untagged, specs)
    return names or ["INBOX"], missing
