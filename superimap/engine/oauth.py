"""The engine's access-token cache (imapclient/tokens.py), one per engine, keeping the
refresh tokens a provider rotates (fenced by the engine's lease, engine/store.py)."""

from __future__ import annotations

import weakref

from superimap.engine import store
from superimap.imapclient import AccessTokens, Account

_engines: weakref.WeakKeyDictionary[object, AccessTokens] = weakref.WeakKeyDictionary()


def access_tokens(engine) -> AccessTokens:
    """The engine's token cache (created on first use)."""
    tokens = _engines.get(engine)
    if tokens is None:

        async def keep_rotated(config: Account, refresh_token: str) -> None:
            await engine.pool.run(
                store.save_refresh_token, config.user_id, engine.node_id, refresh_token
            )

        tokens = _engines[engine] = AccessTokens(on_rotated=keep_rotated)
    return tokens
