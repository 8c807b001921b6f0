"""The message route: one message's raw bytes streamed from the IMAP server on demand.

GET /api/v1/connections/{code}/users/{tag}/messages/{uid_validity}/{uid} answers
``message/rfc822``, read a slice at a time by superimap.imapclient.messages (never the whole
message in memory), or a JSON error: 404 when the user or the message is unknown (another
partner's, expunged, or an old UIDVALIDITY), 409 when the user is archived or not connected,
429 when the login limits (imapclient/ratelimit.py) say not now, 502 when the IMAP server
cannot be reached or refuses the stored credentials.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import weakref

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse

from superimap.api import service
from superimap.api.errors import ApiError
from superimap.engine import store
from superimap.imap import ImapError
from superimap.imapclient import (
    AccessTokens,
    Account,
    AuthFailed,
    CommandFailed,
    LoginLimiter,
    MessageGone,
    ServerBye,
    open_message,
)
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Partner
from superimap.platform.netguard import PrivateTargetRefused

log = logging.getLogger("superimap.messages")

# One access-token cache per event loop (its locks belong to that loop).
_tokens: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AccessTokens] = (
    weakref.WeakKeyDictionary()
)


_limiter: LoginLimiter | None = None


def logins() -> LoginLimiter:
    """The web process's login limits: every request here is an IMAP login, so without
    them API calls could hammer one account or provider (imapclient/ratelimit.py)."""
    global _limiter
    if _limiter is None:
        _limiter = LoginLimiter()
    return _limiter


def _save_rotated(user_id: int, refresh_token: str) -> None:
    """A refresh token the provider rotated while the web process used it: keep it.

    Not fenced by the engine lease (the web holds none); an archived user keeps nothing.
    """
    MailboxUser.objects.filter(id=user_id, archived=False, connected_at__isnull=False).update(
        oauth_refresh_token=refresh_token
    )


def _web_tokens() -> AccessTokens:
    loop = asyncio.get_running_loop()
    tokens = _tokens.get(loop)
    if tokens is None:

        async def keep_rotated(config: Account, refresh_token: str) -> None:
            await sync_to_async(_save_rotated)(config.user_id, refresh_token)

        tokens = _tokens[loop] = AccessTokens(on_rotated=keep_rotated)
    return tokens


def _load_config(partner: Partner, code: str, tag: str) -> store.MailboxConfig:
    user = service.get_user(partner, code, tag)
    if user.archived:
        raise ApiError(409, "archived", f"User {tag!r} is archived; restore it with PUT.")
    if not user.watchable:
        raise ApiError(409, "not_connected", f"User {tag!r} is not connected.")
    return store.config_of(user)


async def stream_message(
    partner: Partner, code: str, tag: str, uid_validity: int, uid: int, folder: str | None = None
) -> StreamingHttpResponse:
    config = await sync_to_async(_load_config)(partner, code, tag)
    if uid_validity < 1 or uid < 1:
        raise ApiError(404, "message_not_found", "No such message.")
    wait = logins().try_login(config.user_id, config.host)
    if wait > 0:
        raise ApiError(
            429,
            "imap_rate_limited",
            f"Too many IMAP logins for this mailbox or its server; retry in {math.ceil(wait)} s.",
        )
    try:
        # The folder the UID belongs to: new_mail's folder, by default the primary one.
        message = await open_message(
            config,
            uid_validity,
            uid,
            _web_tokens(),
            folder or config.checkpoint_folder,
            missing_folder_is_gone=folder is not None,
        )
    except MessageGone as exc:
        raise ApiError(
            404,
            "message_not_found",
            f"Message {uid_validity}/{uid} is not in the mailbox (expunged, or the mailbox's "
            f"UIDVALIDITY changed): {exc}",
        ) from None
    except AuthFailed as exc:
        raise ApiError(
            502, "imap_auth_failed", f"The IMAP server refused the login: {exc}"
        ) from None
    except PrivateTargetRefused as exc:
        # As the engine reports it (last_error): the host and port, no address or detail.
        raise ApiError(
            502, "imap_unavailable", f"The IMAP server could not be read: {exc}"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise ApiError(
            502, "imap_tls_failed", f"IMAP certificate check failed: {exc.reason}"
        ) from None
    except (ImapError, ServerBye, CommandFailed, OSError, TimeoutError) as exc:
        log.info("mailbox %s: message route: %s: %s", config.label, type(exc).__name__, exc)
        raise ApiError(
            502, "imap_unavailable", f"The IMAP server could not be read: {type(exc).__name__}"
        ) from None
    response = StreamingHttpResponse(message, content_type="message/rfc822")
    response["Content-Disposition"] = f'attachment; filename="{uid_validity}-{uid}.eml"'
    response["Cache-Control"] = "private, no-store"
    response["X-Message-Size"] = str(message.size)
    return response
