"""Sans-IO IMAP4rev1: framing, response events and a client state machine. No I/O here."""

from superimap.imap.errors import ImapError, LocalProtocolError, RemoteProtocolError
from superimap.imap.events import (
    Bye,
    Capability,
    Continuation,
    Event,
    Exists,
    Expunge,
    Fetch,
    Flags,
    Greeting,
    MailboxListing,
    MailboxStatus,
    Recent,
    SearchResult,
    TaggedResponse,
    Unknown,
    UntaggedStatus,
    Vanished,
)
from superimap.imap.protocol import ClientProtocol, State

__all__ = [
    "Bye",
    "Capability",
    "ClientProtocol",
    "Continuation",
    "Event",
    "Exists",
    "Expunge",
    "Fetch",
    "Flags",
    "Greeting",
    "ImapError",
    "LocalProtocolError",
    "MailboxListing",
    "MailboxStatus",
    "Recent",
    "RemoteProtocolError",
    "SearchResult",
    "State",
    "TaggedResponse",
    "Unknown",
    "UntaggedStatus",
    "Vanished",
]
