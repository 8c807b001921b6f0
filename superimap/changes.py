"""Knowing which fields a change touched, for the engine's restart-on-change rule.

The engine restarts a mailbox's IMAP session only when something the session uses
changed (credentials, host, port, TLS, folder): a restart is a new login, and providers
throttle or lock accounts on login storms. Models remember the tracked fields' values as
loaded; superimap/accounts compares them when it saves a change (saving a model itself
restarts nothing).
"""

from __future__ import annotations

import secrets


def new_session_version() -> str:
    return secrets.token_hex(8)


class TrackedFields:
    """Mixin for a Model: ``TRACKED`` fields are remembered when loaded from the database."""

    TRACKED: tuple[str, ...] = ()

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        instance.remember_tracked()
        return instance

    def refresh_from_db(self, *args, **kwargs) -> None:
        super().refresh_from_db(*args, **kwargs)
        self.remember_tracked()

    def remember_tracked(self) -> None:
        # Deferred fields (not loaded) are left out: they cannot have been changed unseen.
        loaded = self.__dict__
        self._tracked = {name: loaded[name] for name in self.TRACKED if name in loaded}

    def loaded_values(self) -> dict:
        """The tracked fields' values as loaded from the database (or as last saved)."""
        return dict(getattr(self, "_tracked", None) or {})

    def tracked_changed(self) -> bool:
        """True if a tracked field differs from its loaded value (always, for a new row)."""
        tracked = getattr(self, "_tracked", None)
        if tracked is None or self.pk is None:
            return True
        return any(self.__dict__.get(name, old) != old for name, old in tracked.items())
