"""Engine test tools: loopback connections, scripted IMAP servers, the chaos server on a
thread, an Engine on the test's loop, and polling."""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import threading
import time

from django.utils import timezone

from devtools.testing.chaos_server import ChaosImapServer
from devtools.testing.oauth_server import LoopbackOAuthServer
from devtools.testing.users import chaos_users
from superimap.engine.session import SessionSettings
from superimap.engine.supervisor import Engine
from superimap.imapclient import LoginLimiter
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner
from superimap.platform.dbpool import DbPool


def loopback_connection(partner: Partner, port: int, tls: str = "none") -> Connection:
    return Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        imap_host="127.0.0.1",
        imap_port=port,
        imap_tls=tls,
    )


def loopback_users(partner: Partner, port: int, count: int) -> None:
    """`count` users of the chaos server (user{i} / pass{i}) on a loopback connection."""
    chaos_users(partner, port, count)


def answer_uid_command(writer, tag: str, command: str, mail: list[bytes]) -> None:
    """A scripted server's answer to ``UID SEARCH UID n:*`` or ``UID FETCH`` (of any of
    size, date, ``BODY.PEEK[]`` and a partial ``BODY.PEEK[]<0.n>``) over ``mail``, where
    message i has UID i + 1."""
    if command.startswith("UID SEARCH"):
        first = int(command.split()[3].split(":")[0])
        uids = " ".join(str(u) for u in range(first, len(mail) + 1))
        writer.write(f"* SEARCH {uids}\r\n{tag} OK done\r\n".encode())
        return
    items = command.split(" ", 3)[3].strip("()").split()
    for uid in uid_set(command.split()[2], len(mail)):
        raw = mail[uid - 1]
        parts = [f"UID {uid}".encode()]
        if "RFC822.SIZE" in items:
            parts.append(b"RFC822.SIZE %d" % len(raw))
        if "INTERNALDATE" in items:
            parts.append(b'INTERNALDATE "01-Jan-2026 00:00:00 +0000"')
        for item in items:
            if item == "BODY.PEEK[]":
                parts.append(b"BODY[] {%d}\r\n%s" % (len(raw), raw))
            elif item.startswith("BODY.PEEK[]<0."):
                part = raw[: int(item[len("BODY.PEEK[]<0.") : -1])]
                parts.append(b"BODY[]<0> {%d}\r\n%s" % (len(part), part))
        writer.write(b"* %d FETCH (%s)\r\n" % (uid, b" ".join(parts)))
    writer.write(f"{tag} OK fetched\r\n".encode())


class LoopbackServer(abc.ABC):
    """A TCP server on 127.0.0.1 (a free port) handing each connection to serve()."""

    server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    @abc.abstractmethod
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Talk to one client."""


def uid_set(text: str, largest: int) -> list[int]:
    """The UIDs of an IMAP set ("3", "1,4", "5:*") among 1..largest; "n:*" with n above
    the largest UID means the largest (RFC 3501 6.4.8), as real servers answer."""
    uids: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition(":")
        first = largest if low == "*" else int(low)
        last = first if not high else largest if high == "*" else int(high)
        first, last = min(first, last), max(first, last)
        uids.update(u for u in range(first, last + 1) if 1 <= u <= largest)
    return sorted(uids)


class ServerThread:
    """The chaos server on its own event loop in a thread, so engine subprocesses reach it."""

    def __init__(self, users: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = ChaosImapServer(users=users, seed=3)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def call(self, fn, *args):
        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


FAST = SessionSettings(command_timeout=5, fetch_timeout=10, idle_reissue=60, poll_interval=0.5)


class RunningEngine:
    """An Engine on its own asyncio loop, for use inside `async` test bodies."""

    def __init__(self, node_id: str = "test-node", **kwargs) -> None:
        self.pool = DbPool(size=3)
        kwargs.setdefault("session_settings", FAST)
        kwargs.setdefault("refresh_interval", 0.2)
        self.engine = Engine(self.pool, node_id, **kwargs)
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Engine:
        self.task = asyncio.create_task(self.engine.run(self.stop))
        return self.engine

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)
        self.pool.shutdown()


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll a sync DB predicate (run in a thread) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class SessionSampler:
    """Samples, from the chaos server's own loop, the most IMAP sessions any user had."""

    def __init__(self, chaos: ServerThread) -> None:
        self.chaos = chaos
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        sessions = self.chaos.server.sessions_by_user.values()
        return max((len(s) for s in sessions), default=0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, self.chaos.call(self._sample))
            time.sleep(0.05)

    def __enter__(self) -> SessionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def idling(server) -> set[str]:
    """Users with a live session in IDLE (called on the chaos server's loop)."""
    return {
        user
        for user, sessions in server.sessions_by_user.items()
        if any(s.idle_tag is not None and not s.closed for s in sessions)
    }


# Retries every few tenths of a second, so "not per retry" is put to the test.
RETRY_FAST = dataclasses.replace(FAST, max_backoff=0.3, max_auth_backoff=0.3)


def fast_engine(**kwargs) -> RunningEngine:
    """An engine that retries at RETRY_FAST's pace: the login limits (5 logins per mailbox,
    then one per 30 s; tests/engine/test_login_limits.py) would hold it after 5 retries."""
    return RunningEngine(
        session_settings=RETRY_FAST, login_limiter=LoginLimiter(mailbox_burst=10_000), **kwargs
    )


def oauth_user(
    partner: Partner, imap: ChaosImapServer, oauth: LoopbackOAuthServer, login: str, token: str
) -> int:
    connection = Connection.objects.filter(partner=partner).first()
    if connection is None:
        connection = Connection.objects.create(
            partner=partner,
            provider=ImapProvider.objects.get(code="LOOPBACK_OAUTH2"),
            imap_host="127.0.0.1",
            imap_port=imap.port,
            imap_tls="none",
            oauth_client_id=oauth.client_id,
            oauth_client_secret=oauth.client_secret,
            oauth_base_url=oauth.base_url,
        )
    user = MailboxUser.objects.create(
        connection=connection,
        tag=f"tag-{login}",
        email=login,  # the chaos server's logins are user{i}; XOAUTH2 user= is the email
        oauth_refresh_token=token,
        connected_at=timezone.now(),
    )
    return user.id
