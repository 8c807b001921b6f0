"""bench.tlsscale's spread of the first IDLE periods (re-issues at the steady rate from the
ramp on): the period read by a session's shortened first IDLE is given back right after,
so its next IDLE lasts the full period (a re-issue reports no status to hook)."""

from __future__ import annotations

from types import SimpleNamespace

from devtools.bench.tlsscale import _give_back_periods
from superimap.engine.session import MailboxSession


def test_the_full_period_is_given_back_once_the_first_idle_read_its_own(monkeypatch) -> None:
    monkeypatch.setattr(MailboxSession, "_until_wake", MailboxSession._until_wake)  # undone
    spread = {7: 1680.0}
    _give_back_periods(spread)
    session = SimpleNamespace(
        user_id=7,
        _idle_period=42.0,  # the shortened first period
        others=SimpleNamespace(until_poll=lambda period: period),
        changes=None,
    )
    assert MailboxSession._until_wake(session, session._idle_period) == 42.0
    assert session._idle_period == 1680.0 and spread == {}
    assert MailboxSession._until_wake(session, session._idle_period) == 1680.0
