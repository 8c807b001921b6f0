"""Exceptions raised by the sans-IO IMAP layer."""


class ImapError(Exception):
    """Base class of every error raised by :mod:`superimap.imap`."""


class RemoteProtocolError(ImapError):
    """The peer sent something we cannot accept (garbage, limit exceeded, bad tag)."""


class LocalProtocolError(ImapError):
    """We misused the protocol (command not allowed in the current state, bad argument)."""
