"""Fair sharing of a worker's sending slots between partners (design.md 5.1).

All partners share one queue and each worker's WEBHOOK_CONCURRENCY slots. Without limits a
partner whose endpoint accepts connections and never answers held every slot until the
timeout, and everyone else's webhooks waited behind it. So, per worker:

- at most WEBHOOK_PARTNER_CONCURRENCY POSTs of one partner are open at once, and at most
  WEBHOOK_ENDPOINT_CONCURRENCY to one endpoint (partner and kind, as in EndpointHealth);
- a slow endpoint (a POST to it open for SLOW_AFTER_SECONDS, or its last attempt took that
  long or got no answer: timeout, connection error) gets WEBHOOK_SLOW_ENDPOINT_CONCURRENCY;
- a claim skips endpoints and partners that are full (in SQL, so their backlog does not
  fill the claim's LIMIT) and takes at most each one's room from the rows it reads, so
  one claim serves every partner with due rows, oldest first within each;
- a busy worker's claim may also take a few rows *ahead* (`Room.ahead`, issue 20
  workerpipe): past an endpoint's cap, up to twice it (not for a partner with a slow
  endpoint, or one with a POST open for AHEAD_STALLED_SECONDS), rows the
  worker holds, leased, and sends as that endpoint's POSTs finish. The caps hold for the
  POSTs open; the rows held count as open for the next claim's room.

`Shares` is the worker's count of open POSTs; `Room` is what one claim may still take.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

from django.conf import settings

from superimap.platform.sqltext import marks

SLOW_AFTER_SECONDS = 5.0
# An endpoint with a POST open this long takes no rows ahead (Room.ahead): they would wait
# for it, and the worker hands back rows it could not send within about as long.
AHEAD_STALLED_SECONDS = 1.0
# A claim that skipped rows of endpoints it just filled may look again without them, at
# most this many times in all. Each look is one more SELECT in the same transaction, and it
# walks past the skipped backlog, so the worker allows it only when new work came in or a
# poll interval passed, not for every batch of finished sends.
CLAIM_ROUNDS = 3

Endpoint = tuple[int, str]  # (partner_id, kind)


@dataclass(frozen=True)
class Caps:
    partner: int
    endpoint: int
    slow_endpoint: int

    @classmethod
    def for_concurrency(cls, concurrency: int) -> Caps:
        """The settings, or by default 60 % (partner) and 40 % (endpoint) of the slots."""
        partner = settings.WEBHOOK_PARTNER_CONCURRENCY or max(1, concurrency * 3 // 5)
        endpoint = settings.WEBHOOK_ENDPOINT_CONCURRENCY or max(1, concurrency * 2 // 5)
        partner = min(partner, concurrency)
        endpoint = min(endpoint, partner)
        return cls(partner, endpoint, min(settings.WEBHOOK_SLOW_ENDPOINT_CONCURRENCY, endpoint))


@dataclass
class Room:
    """What one claim may still take, per partner and per endpoint."""

    caps: Caps
    partner_open: Counter = field(default_factory=Counter)
    endpoint_open: Counter = field(default_factory=Counter)
    slow: frozenset = frozenset()
    stalled: frozenset = frozenset()
    """Endpoints with a POST open longer than AHEAD_STALLED_SECONDS: nothing ahead for their
    partner, nor for a partner with a slow endpoint."""
    rounds: int = 1
    """How many SELECTs the claim may use (fair_rows)."""
    ahead: int = 0
    """How many rows the claim may take past the caps of partners with no slow or stalled
    endpoint (up to twice an endpoint's cap, a partner's cap plus an endpoint's): held by
    the worker until a POST of theirs finishes."""
    more: bool = False
    """Set by fair_rows: a SELECT hit its LIMIT or left rows of a full partner or endpoint
    behind, so due rows may remain that this claim did not take."""

    def endpoint_cap(self, endpoint: Endpoint) -> int:
        return self.caps.slow_endpoint if endpoint in self.slow else self.caps.endpoint

    def take(self, partner_id: int, kind: str) -> bool:
        endpoint = (partner_id, kind)
        partner_open = self.partner_open[partner_id]
        endpoint_open = self.endpoint_open[endpoint]
        cap = self.endpoint_cap(endpoint)
        if partner_open < self.caps.partner and endpoint_open < cap:
            pass  # its share
        elif (
            self.ahead > 0
            and self._may_go_ahead(endpoint)
            and partner_open < self.caps.partner + cap
            and endpoint_open < 2 * cap
        ):
            self.ahead -= 1  # ahead: held until a POST of the endpoint finishes
        else:
            return False
        self.partner_open[partner_id] += 1
        self.endpoint_open[endpoint] += 1
        return True

    @cached_property
    def _troubled(self) -> frozenset:
        """Partners with a slow or stalled endpoint: none of their endpoints goes ahead (so a
        partner at its cap with a hanging endpoint stays skipped in the claim's SQL)."""
        return frozenset(endpoint[0] for endpoint in self.slow | self.stalled)

    def _may_go_ahead(self, endpoint: Endpoint) -> bool:
        return endpoint[0] not in self._troubled

    def full(self) -> tuple[list[int], list[Endpoint]]:
        """Partners and endpoints that can take nothing more: the claim's SQL skips them.
        With rows left to take ahead, those at their cap may take more (not slow or stalled
        ones)."""
        ahead = self.caps.endpoint if self.ahead > 0 else 0
        partners = sorted(
            p
            for p, n in self.partner_open.items()
            if n >= self.caps.partner + (0 if p in self._troubled else ahead)
        )
        blocked = set(partners)
        endpoints = sorted(
            e
            for e, n in self.endpoint_open.items()
            if e[0] not in blocked
            and n >= self.endpoint_cap(e) * (2 if ahead and self._may_go_ahead(e) else 1)
        )
        return partners, endpoints


class Shares:
    """The worker's open POSTs by partner and endpoint, and which endpoints are slow."""

    def __init__(self, caps: Caps, clock=time.monotonic) -> None:
        self.caps = caps
        self.clock = clock
        self._open: dict[int, tuple[Endpoint, float]] = {}  # delivery id -> (endpoint, start)
        self._slow: set[Endpoint] = set()  # by their last finished attempt
        self._partner_n: Counter = Counter()  # open POSTs per partner and endpoint
        self._endpoint_n: Counter = Counter()

    def opened(self, delivery_id: int, partner_id: int, kind: str) -> None:
        endpoint = (partner_id, kind)
        self._open[delivery_id] = (endpoint, self.clock())
        self._partner_n[partner_id] += 1
        self._endpoint_n[endpoint] += 1

    def closed(self, delivery_id: int, answered: bool, seconds: float) -> None:
        endpoint = self._pop(delivery_id)
        if endpoint is None:
            return
        if answered and seconds < SLOW_AFTER_SECONDS:
            self._slow.discard(endpoint)
        else:
            self._slow.add(endpoint)

    def dropped(self, delivery_id: int) -> None:
        """A claim that was not sent: its slot is free, the endpoint not judged."""
        self._pop(delivery_id)

    def _pop(self, delivery_id: int) -> Endpoint | None:
        entry = self._open.pop(delivery_id, None)
        if entry is None:
            return None
        endpoint = entry[0]
        self._partner_n[endpoint[0]] -= 1
        self._endpoint_n[endpoint] -= 1
        return endpoint

    def fits(self, endpoint: Endpoint) -> bool:
        """Whether one more POST to the endpoint may open now (a row held ahead): under its
        partner's cap and its own (the slow one's, when its last attempt was slow)."""
        cap = self.caps.slow_endpoint if endpoint in self._slow else self.caps.endpoint
        return self._endpoint_n[endpoint] < cap and self._partner_n[endpoint[0]] < self.caps.partner

    def room(self, rounds: int = 1) -> Room:
        room = Room(self.caps, rounds=rounds)
        slow = set(self._slow)
        stalled = set()
        now = self.clock()
        stale = now - SLOW_AFTER_SECONDS
        late = now - AHEAD_STALLED_SECONDS
        for endpoint, started in self._open.values():
            room.partner_open[endpoint[0]] += 1
            room.endpoint_open[endpoint] += 1
            if started <= late:
                stalled.add(endpoint)
                if started <= stale:
                    slow.add(endpoint)
        room.slow = frozenset(slow)
        room.stalled = frozenset(stalled)
        return room


def skipping(due_sql: str, params: list, room: Room) -> tuple[str, list]:
    """The due-rows SELECT without the rows of full partners and endpoints.

    The condition goes before the outer ORDER BY; the only parameter after it is LIMIT."""
    partners, endpoints = room.full()
    if not partners and not endpoints:
        return due_sql, params
    conditions, values = [], []
    if partners:
        conditions.append(f"partner_id NOT IN ({marks(partners)})")
        values.extend(partners)
    for partner_id, kind in endpoints:
        conditions.append("NOT (partner_id = %s AND kind = %s)")
        values.extend((partner_id, kind))
    head, order_by, tail = due_sql.rpartition(" ORDER BY ")
    sql = f"{head} AND {' AND '.join(conditions)}{order_by}{tail}"
    return sql, [*params[:-1], *values, params[-1]]


def fair_rows(cursor, due_sql: str, params: list, limit: int, room: Room | None) -> list:
    """Due rows for one claim: without a room, the plain SELECT; with one, up to
    `room.rounds` SELECTs that skip what is full and keep only what fits.

    Row columns used: [2] kind, [4] partner_id (as queue._claim_sql selects them)."""
    if room is None:
        cursor.execute(due_sql, [*params, limit])
        return cursor.fetchall()
    taken: list = []
    seen: set = set()
    for _ in range(room.rounds):
        # The full LIMIT each time: rows taken in an earlier look (not yet leased) come
        # back, and there are never more of them than rows still wanted are missing.
        sql, values = skipping(due_sql, [*params, limit], room)
        if sql != due_sql:
            room.more = True  # full partners' rows are not read, and may be due
        cursor.execute(sql, values)
        rows = cursor.fetchall()
        skipped = False
        for row in rows:
            if row[0] in seen or len(taken) >= limit:
                continue
            seen.add(row[0])
            if room.take(row[4], row[2]):
                taken.append(row)
            else:
                skipped = True
        if skipped or len(rows) >= limit:
            room.more = True
        # Another look only helps when this one was cut short by rows that did not fit.
        if not skipped or len(rows) < limit or len(taken) >= limit:
            break
    return taken
