"""What an idle mailbox session holds (design.md 4.13): every byte counts at 100,000 of
them. Against the chaos server under uvloop, once every session is in IDLE: no config
(read for the connection and dropped after it), the wait awaited from the watch loop (the
task waits in run, _watch and next_event only), no timer of the connection's own (the
IDLE's deadline is a whole second, whose timer is shared), no framer lists between
frames, no empty set of unpersisted UIDs, and one status tuple shared by every session
(and the engine) reporting the same clean status."""

from __future__ import annotations

import asyncio
import gc

import uvloop

from devtools.testing.chaos_server import ChaosImapServer
from superimap.engine.store import MailboxConfig
from superimap.sync.mailbox import NO_UIDS
from tests.helpers.engine import RunningEngine, loopback_users, wait_for

MAILBOXES = 3


def _chain(task: asyncio.Task) -> list[str]:
    """The coroutines a task waits in, outermost first."""
    names = []
    awaiting = task.get_coro()
    while hasattr(awaiting, "cr_code"):
        names.append(awaiting.cr_code.co_name)
        awaiting = awaiting.cr_await
    return names


def test_it_holds_only_what_the_wait_needs_while_idle(mail_partner, settings) -> None:
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True

    async def scenario():
        server = ChaosImapServer(users=MAILBOXES, chaos=False, seed=5)
        await server.start()
        await asyncio.to_thread(loopback_users, mail_partner, server.port, MAILBOXES)
        try:
            async with RunningEngine(refresh_interval=0.2) as engine:

                def all_idle() -> bool:
                    statuses = list(engine._current.values())
                    return len(statuses) == MAILBOXES and set(statuses) == {"idle"}

                await wait_for(all_idle, timeout=30)
                await asyncio.sleep(0.3)  # the last IDLEs' waits begun
                gc.collect()
                configs = sum(
                    isinstance(o, MailboxConfig) and o.user_id in engine.sessions
                    for o in gc.get_objects()
                )
                sessions = [(session, task) for session, task, _ in engine.sessions.values()]
                return (
                    configs,
                    [_chain(task) for _, task in sessions],
                    [(s.conn._timer, s.conn.shared_deadline > 0) for s, _ in sessions],
                    [s.conn.protocol._framer._lines for s, _ in sessions],
                    [s.primary.unpersisted is NO_UIDS for s, _ in sessions],
                    {id(s._reported) for s, _ in sessions},
                    {id(engine._written.get(s.user_id, s._reported)) for s, _ in sessions},
                )
        finally:
            await server.stop()

    configs, chains, timers, frames, shared_sets, reported, written = uvloop.run(scenario())
    assert configs == 0
    assert chains == [["run", "_watch", "next_event"]] * MAILBOXES
    assert timers == [(None, True)] * MAILBOXES
    assert frames == [None] * MAILBOXES  # no frame's lists between frames
    assert shared_sets == [True] * MAILBOXES
    assert len(reported) == 1 and written == reported
