"""bench.tlsscale's spread of the first IDLE periods (re-issues at the steady rate from the
ramp on): the first IDLE is shortened, the period is given back when it ends, and the next
IDLE is the session's own method again (a re-issue reports no status to hook)."""

from __future__ import annotations

import asyncio

from devtools.bench.tlsscale import _spread_first_period


class IdlingSession:
    """What the helper touches of a MailboxSession: the period and the IDLE wait."""

    def __init__(self, period: float) -> None:
        self._idle_period = period
        self.waited: list[float] = []

    async def _idle(self, at_most: float | None = None) -> None:
        self.waited.append(self._idle_period)


def test_the_first_idle_is_shortened_and_the_period_given_back_after_it() -> None:
    session = IdlingSession(1680.0)
    _spread_first_period(session)
    assert 0 < session._idle_period <= 1680.0
    asyncio.run(session._idle())
    asyncio.run(session._idle())
    first, second = session.waited
    assert 0 < first <= 1680.0 and second == 1680.0
    assert session._idle_period == 1680.0
    assert "_idle" not in vars(session)  # the wrapper left: the class's method again
