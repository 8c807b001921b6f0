"""Login rate limits: token buckets per mailbox and per provider host.

Every IMAP login (a session start, a reconnect, a restart after a change) first takes a
token from its mailbox's bucket and then one from its server host's bucket, waiting when
a bucket is empty. So no pattern of API calls and no reconnect storm can log in to one
account, or to one provider, faster than the operator allows:

- per mailbox: IMAP_LOGIN_BURST_PER_MAILBOX logins at once, then one every
  IMAP_LOGIN_INTERVAL_PER_MAILBOX seconds (defaults 5 and 30 s: at most 120 an hour);
- per host: IMAP_LOGIN_BURST_PER_HOST at once, then IMAP_LOGINS_PER_SECOND_PER_HOST a
  second (defaults 500 and 50/s: 20,000 mailboxes on one provider start in ~7 minutes);
  IMAP_LOGIN_LIMITS sets other limits for named hosts ("imap.example.com=2000/200,...").
  Loopback and private addresses (a self-hosted server on the box or the LAN, the chaos
  server of the benches) have limits of their own, LOOPBACK_LIMITS and PRIVATE_LIMITS,
  which IMAP_LOGIN_LIMITS may change under the names "loopback" and "private". The host
  is the connection's imap_host as written: a name that resolves to 127.0.0.1 is not
  loopback here, "localhost" is.

The API's message route logs in too, once per request, from the web process: it takes its
tokens from a limiter of its own (the same limits, separate from the engine's) and answers
429 instead of waiting. Each process holds one LoginLimiter (the engine's supervisor, the
web's api/messages.py); the hosted form's login check takes no token (as before).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable, Mapping

from django.conf import settings

# (burst, logins a second). Loopback: 100,000 mailboxes on one box start in under a minute
# of login tokens (TLS handshakes are the limit then). Private (RFC 1918, ULA): a
# self-hosted server on the LAN, 5,000 at once then 500/s.
LOOPBACK_LIMITS = (20_000, 2_000.0)
PRIVATE_LIMITS = (5_000, 500.0)


def host_class(host: str) -> str:
    """ "loopback", "private" or "" (anything else) for an imap_host as written."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "loopback"
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return ""
    if address.is_loopback:
        return "loopback"
    return "private" if address.is_private and not address.is_link_local else ""


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` a second. reserve() always takes a token and
    says how long to wait for it (tokens may go negative: callers queue in order)."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def reserve(self, now: float) -> float:
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def wait(self, now: float) -> float:
        """Seconds until a token is there, taking none."""
        tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class LoginLimiter:
    def __init__(
        self,
        *,
        mailbox_burst: int | None = None,
        mailbox_interval: float | None = None,
        host_burst: int | None = None,
        host_rate: float | None = None,
        host_limits: Mapping[str, tuple[int, float]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mailbox_burst = mailbox_burst or settings.IMAP_LOGIN_BURST_PER_MAILBOX
        interval = mailbox_interval or settings.IMAP_LOGIN_INTERVAL_PER_MAILBOX
        self.mailbox_rate = 1.0 / interval
        self.host_burst = host_burst or settings.IMAP_LOGIN_BURST_PER_HOST
        self.host_rate = float(host_rate or settings.IMAP_LOGINS_PER_SECOND_PER_HOST)
        # Per host name, and for the classes "loopback" and "private" (host_class()).
        self.host_limits = {
            "loopback": LOOPBACK_LIMITS,
            "private": PRIVATE_LIMITS,
            **(settings.IMAP_LOGIN_LIMITS if host_limits is None else host_limits),
        }
        self.clock = clock
        self.mailboxes: dict[int, TokenBucket] = {}
        self.hosts: dict[str, TokenBucket] = {}
        self.waited = 0.0  # seconds of waiting imposed, for tests and metrics

    def _take(self, buckets: dict, key, rate: float, burst: int) -> float:
        now = self.clock()
        return self._bucket(buckets, key, rate, burst, now).reserve(now)

    def _bucket(self, buckets: dict, key, rate: float, burst: int, now: float) -> TokenBucket:
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) > 1000 and len(buckets) % 1000 == 0:
                self._forget_full(buckets, now)
            bucket = buckets[key] = TokenBucket(rate, burst, now)
        return bucket

    @staticmethod
    def _forget_full(buckets: dict, now: float) -> None:
        """A full bucket is the same as no bucket: drop them now and then. Cleared and
        filled again, so the dict's table shrinks too (deleting keys never shrinks it)."""
        kept = {k: b for k, b in buckets.items() if not b.full(now)}
        buckets.clear()
        buckets.update(kept)

    def forget_full(self) -> None:
        """Forget the mailboxes whose bucket is full again: one login fills it
        IMAP_LOGIN_INTERVAL_PER_MAILBOX seconds later, and it was kept, ~200 bytes with its
        slot, for as long as the mailbox stayed connected (design.md 4.13). The engine calls
        it once a minute."""
        self._forget_full(self.mailboxes, self.clock())

    def mailbox_delay(self, user_id: int) -> float:
        return self._take(self.mailboxes, user_id, self.mailbox_rate, self.mailbox_burst)

    def host_limit(self, host: str) -> tuple[int, float]:
        """(burst, logins a second) for ``host``: its own, its class's, or the default."""
        limit = self.host_limits.get(host) or self.host_limits.get(host_class(host))
        return limit or (self.host_burst, self.host_rate)

    def _host_bucket(self, host: str, now: float) -> TokenBucket:
        host = host.lower()
        bucket = self.hosts.get(host)
        if bucket is None:
            burst, rate = self.host_limit(host)
            bucket = self._bucket(self.hosts, host, rate, burst, now)
        return bucket

    def host_delay(self, host: str) -> float:
        now = self.clock()
        return self._host_bucket(host, now).reserve(now)

    def try_login(self, user_id: int, host: str) -> float:
        """For a caller that answers rather than waits (the API's message route): 0.0 and
        both tokens taken when this mailbox may log in now, otherwise the seconds until it
        may, taking none."""
        now = self.clock()
        buckets = [
            self._bucket(self.mailboxes, user_id, self.mailbox_rate, self.mailbox_burst, now),
            self._host_bucket(host, now),
        ]
        wait = max(bucket.wait(now) for bucket in buckets)
        if wait == 0.0:
            for bucket in buckets:
                bucket.reserve(now)
        return wait

    async def wait_turn(
        self, user_id: int, host: str, sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        """Wait (with ``sleep``, which a stopping session cuts short) until this mailbox
        may log in: first its own bucket, then its host's."""
        for delay in (lambda: self.mailbox_delay(user_id), lambda: self.host_delay(host)):
            wait = delay()
            if wait > 0:
                self.waited += wait
                await sleep(wait)
