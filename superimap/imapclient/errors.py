"""What the IMAP client raises, apart from the sans-IO layer's ImapError and OSError.

How the engine's session takes each (design.md 4.2): ServerBye, CommandFailed, OSError and
TokenUnavailable back off and reconnect; AuthFailed and TlsCertificateFailed need a human
(auth_failed, tls_failed) and back off long.
"""

from __future__ import annotations

import ssl

from superimap.imap import TaggedResponse


class ServerBye(Exception):
    """The server said BYE (or closed) and the session must reconnect."""


class CommandFailed(Exception):
    """A command got NO or BAD."""

    def __init__(self, command: str, response: TaggedResponse) -> None:
        super().__init__(f"{command} answered {response.status}: {response.text[:200]}")
        self.response = response


class AuthFailed(Exception):
    """The server (or the OAuth token endpoint) refused these credentials: a human must
    fix them."""


class TokenUnavailable(OSError):
    """The token endpoint could not be reached or failed (5xx, timeout): try again later."""


class TlsCertificateFailed(ssl.SSLCertVerificationError):
    """The server's certificate did not verify: a human must fix the connection's TLS
    settings, so the session reports tls_failed instead of retrying at the normal pace.
    Still an SSLCertVerificationError, with the fix in its message and ``reason``."""

    def __init__(self, host: str, error: ssl.SSLCertVerificationError) -> None:
        reason = getattr(error, "verify_message", None) or error.reason or str(error)
        fix = (
            "give the connection the server's CA certificate as imap_tls_ca (PEM), or, "
            "insecure, set imap_tls_verify to false"
        )
        if "hostname" in reason.lower():
            fix = f"set imap_host to a name the certificate is for, or {fix}"
        message = f"TLS certificate of {host} not trusted ({reason}). Fix: {fix}"
        super().__init__(message)
        self.reason = message
        self.verify_message = getattr(error, "verify_message", None)
        self.verify_code = getattr(error, "verify_code", None)
