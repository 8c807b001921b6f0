"""Every state change of partners, connections and mailbox users, with its side effects.

The API (superimap/api), the dashboard (admin), the hosted connect/disconnect pages and the
CLI call these functions; none of them sets a model field that matters to the engine on its
own. Models only hold data: saving one restarts nothing. A change that the engine's IMAP
session must see (credentials, server, TLS, folders, a sweep) bumps the user's
session_version here, in the same write; the engine compares it (engine/leases.py).

- checks.py: the pure field checks (no database, no DNS), shared by every caller;
- users.py: connect, disconnect, credentials, archive, restore, sweep, pause, resume,
  reconnect, and the dashboard's edit of a user;
- connections.py: connection and provider settings (restarting their users' sessions);
- partners.py: partner settings, key and secret rotations, createpartner.
"""
