"""Tracer tests reuse the engine fixtures: a real Dovecot, mailbox users, RunningEngine."""

from tests.engine.conftest import mail_partner, mailbox  # noqa: F401
