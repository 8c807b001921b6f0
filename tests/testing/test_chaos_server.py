"""The chaos IMAP server, driven over 127.0.0.1 by our own sans-IO ClientProtocol."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from devtools.testing.chaos_server import ChaosImapServer, Fault, main
from superimap.imap import (
    Bye,
    ClientProtocol,
    Continuation,
    Event,
    Exists,
    Expunge,
    Fetch,
    ImapError,
    RemoteProtocolError,
    SearchResult,
    TaggedResponse,
    UntaggedStatus,
)

TIMEOUT = 2.0
MESSAGE = b"From: a@example.com\r\nSubject: hi\r\nMessage-ID: <m1@example.com>\r\n\r\nbody\r\n"


class Client:
    """A minimal asyncio driver for ClientProtocol (the engine has the real one)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = ClientProtocol(max_literal_size=1 << 20)
        self.backlog: list[Event] = []

    @classmethod
    async def connect(cls, port: int) -> Client:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        await client.next_event()
        return client

    async def next_event(self, timeout: float = TIMEOUT) -> Event:
        while not self.backlog:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            self.backlog.extend(self.protocol.receive_data(data))
            if not data:
                raise EOFError("the server closed the connection after BYE")
        return self.backlog.pop(0)

    async def send(self, command: tuple[str, bytes], timeout: float = TIMEOUT) -> list[Event]:
        """Send a command and return its events, the tagged response last."""
        tag, data = command
        self.writer.write(data)
        events = []
        while True:
            event = await self.next_event(timeout)
            events.append(event)
            if isinstance(event, TaggedResponse) and event.tag == tag:
                return events

    async def login(self, user: str = "user0") -> None:
        events = await self.send(self.protocol.login(user, "pass" + user.removeprefix("user")))
        assert events[-1].status == "OK"

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def run(scenario: Callable[[ChaosImapServer], Awaitable[None]], **options: object) -> None:
    async def main() -> None:
        async with ChaosImapServer(users=3, seed=7, **options) as server:  # type: ignore[arg-type]
            await scenario(server)

    asyncio.run(main())


def codes(events: list[Event]) -> dict[str, object]:
    return {e.code[0]: e.code[1] for e in events if isinstance(e, UntaggedStatus) and e.code}


def test_it_logs_in_selects_and_searches() -> None:
    async def scenario(server: ChaosImapServer) -> None:
        for _ in range(3):
            server.add_message("user0", MESSAGE)
        client = await Client.connect(server.port)
        await client.login()
        events = await client.send(client.protocol.select("INBOX"))
        assert Exists(3) in events
        assert codes(events)["UIDNEXT"] == 4
        assert codes(events)["UIDVALIDITY"] == server.mailbox("user0").uidvalidity
        events = await client.send(client.protocol.uid_search("UID 2:*"))
        assert SearchResult((2, 3)) in events
        events = await client.send(client.protocol.uid_search("UID 9:*"))
        assert SearchResult((3,)) in events  # RFC 3501: n:* always includes the last UID
        events = await client.send(client.protocol.uid_search("SINCE 1-Jan-2000"))
        assert SearchResult((1, 2, 3)) in events
        await client.close()

    run(scenario)


def test_it_rejects_a_wrong_password() -> None:
    async def scenario(server: ChaosImapServer) -> None:
        client = await Client.connect(server.port)
        events = await client.send(client.protocol.login("user0", "nope"))
        assert events[-1].status == "NO"
        assert events[-1].code == ("AUTHENTICATIONFAILED",)
        await client.close()

    run(scenario)


def test_it_fetches_with_peek_without_setting_seen() -> None:
    async def scenario(server: ChaosImapServer) -> None:
        server.add_message("user1", MESSAGE)
        client = await Client.connect(server.port)
        await client.login("user1")
        await client.send(client.protocol.select("INBOX"))
        events = await client.send(
            client.protocol.uid_fetch("1:*", "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[])")
        )
        fetch = events[0]
        assert isinstance(fetch, Fetch)
        assert (fetch.uid, fetch.size, fetch.body) == (1, len(MESSAGE), MESSAGE)
        assert fetch.internal_date is not None and fetch.internal_date.tzinfo is not None
        assert server.messages_of("user1")[0].flags == set()
        events = await client.send(client.protocol.uid_fetch("1", "(BODY[])"))
        assert events[0].flags == ("\\Seen",)
        assert server.messages_of("user1")[0].flags == {"\\Seen"}
        await client.close()

    run(scenario)


def test_it_authenticates_with_xoauth2() -> None:
    async def scenario(server: ChaosImapServer) -> None:
        client = await Client.connect(server.port)
        events = await client.send(client.protocol.authenticate_xoauth2("user2", "token-for-user2"))
        assert events[-1].status == "OK"
        await client.close()

    run(scenario)


def test_it_sends_an_xoauth2_error_challenge_without_sasl_ir() -> None:
    async def scenario(server: ChaosImapServer) -> None:
        client = await Client.connect(server.port)
        tag, data = client.protocol.authenticate_xoauth2("user2", "stale", sasl_ir=False)
        client.writer.write(data)
        assert isinstance(await client.next_event(), Continuation)
        protocol = client.protocol
        client.writer.write(protocol.authenticate_continue(b"user=user2\x01auth=Bearer x\x01\x01"))
        assert isinstance(await client.next_event(), Continuation)  # the error challenge
        client.writer.write(client.protocol.authenticate_continue())
        response = await client.next_event()
        assert isinstance(response, TaggedResponse) and response.status == "NO"
        await client.close()

    run(scenario)


def test_it_pushes_exists_to_idling_clients() -> None:
    async def scenario(server: ChaosImapServer) -> None:
        client = await Client.connect(server.port)
        await client.login()
        await client.send(client.protocol.select("INBOX"))
        tag, data = client.protocol.idle()
        client.writer.write(data)
        assert isinstance(await client.next_event(), Continuation)
        server.add_message("user0", MESSAGE)
        assert await client.next_event() == Exists(1)
        client.writer.write(client.protocol.done())
        response = await client.next_event()
        assert isinstance(response, TaggedResponse) and response.tag == tag
        await client.close()

    run(scenario)


def test_it_generates_each_message_once_with_a_unique_message_id() -> None:
    async def scenario(server: ChaosImapServer) -> None:
        # 6,000 a minute: ~30 in 0.3 s on an idle box; under the full suite's load the
        # generator's timer runs late (a CI run saw 9 after 0.3 s), so wait for 10, bounded.
        deadline = asyncio.get_running_loop().time() + 10
        while len(server.generated) < 10 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert len(server.generated) >= 10
        delivered: Counter[str] = Counter()
        for user in ("user0", "user1", "user2"):
            for message in server.messages_of(user):
                header = message.raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0]
                delivered[header.decode()] += 1
                assert server.generated[header.decode()] == user
        assert delivered == Counter(dict.fromkeys(server.generated, 1))

    run(scenario, emails_per_minute=6000)


async def _outcome(client: Client, command: tuple[str, bytes]) -> str:
    """Run ``command`` and describe what the client saw."""
    tag, data = command
    client.writer.write(data)
    seen: list[str] = []
    try:
        while True:
            event = await client.next_event(timeout=0.3)
            if isinstance(event, TaggedResponse) and event.tag == tag:
                return " ".join([*seen, event.status])
            seen.append(type(event).__name__)
    except TimeoutError:
        return " ".join([*seen, "stall"])
    except EOFError:
        return " ".join([*seen, "eof"])
    except RemoteProtocolError as error:
        return " ".join([*seen, "error: " + str(error)])


EXPECTED_OUTCOMES = {
    Fault.NO: "NO",
    Fault.BAD: "BAD",
    Fault.TAGGED_GIBBERISH: "error: bad status",
    Fault.UNTAGGED_GIBBERISH: "error",
    Fault.BYE: "Bye eof",
    Fault.RESET: "error: connection closed by the server without BYE",
    Fault.STALL: "stall",
    Fault.TRUNCATED_LITERAL: "error: connection closed in the middle of a response",
    Fault.UIDVALIDITY_CHANGE: "UntaggedStatus Bye eof",
}


@pytest.mark.parametrize("fault", list(Fault))
def test_it_injects_each_fault_kind(fault: Fault) -> None:
    async def scenario(server: ChaosImapServer) -> None:
        server.add_message("user0", MESSAGE)
        client = await Client.connect(server.port)
        await client.login()
        await client.send(client.protocol.select("INBOX"))
        server.inject_fault("user0", fault)
        outcome = await _outcome(client, client.protocol.noop())
        assert server.fault_counts[fault] == 1
        assert outcome.startswith(EXPECTED_OUTCOMES[fault]), outcome
        await client.close()

    run(scenario)


def test_bye_fault_is_seen_before_the_connection_closes() -> None:
    async def scenario(server: ChaosImapServer) -> None:
        client = await Client.connect(server.port)
        await client.login()
        server.inject_fault("user0", Fault.BYE)
        client.writer.write(client.protocol.noop()[1])
        assert isinstance(await client.next_event(), Bye)
        with pytest.raises(EOFError):
            await client.next_event()
        await client.close()

    run(scenario)


def test_uidvalidity_change_renumbers_but_keeps_the_messages() -> None:
    async def scenario(server: ChaosImapServer) -> None:
        for _ in range(3):
            server.add_message("user0", MESSAGE)
        server.mailbox("user0").messages.pop(0)  # leave a gap: UIDs 2 and 3
        old_validity = server.mailbox("user0").uidvalidity
        client = await Client.connect(server.port)
        await client.login()
        await client.send(client.protocol.select("INBOX"))
        server.inject_fault("user0", Fault.UIDVALIDITY_CHANGE)
        client.writer.write(client.protocol.noop()[1])
        event = await client.next_event()
        assert isinstance(event, UntaggedStatus) and event.code[0] == "UIDVALIDITY"
        assert event.code[1] != old_validity
        assert isinstance(await client.next_event(), Bye)
        await client.close()
        client = await Client.connect(server.port)
        await client.login()
        events = await client.send(client.protocol.select("INBOX"))
        assert codes(events)["UIDVALIDITY"] == event.code[1]
        events = await client.send(client.protocol.uid_search("ALL"))
        assert SearchResult((1, 2)) in events
        await client.close()

    run(scenario)


def test_random_chaos_only_ever_raises_imap_errors() -> None:
    async def session(server: ChaosImapServer) -> None:
        client = await Client.connect(server.port)
        try:
            await client.send(client.protocol.login("user1", "pass1"), timeout=0.2)
            await client.send(client.protocol.select("INBOX"), timeout=0.2)
            for _ in range(10):
                await client.send(client.protocol.uid_search("UID 1:*"), timeout=0.2)
                await client.send(client.protocol.uid_fetch("1:*", "(UID BODY.PEEK[])"), 0.2)
        except (ImapError, TimeoutError, EOFError):
            pass  # the engine would back off and reconnect
        finally:
            await client.close()

    async def scenario(server: ChaosImapServer) -> None:
        server.add_message("user1", MESSAGE)
        for _ in range(4):
            await asyncio.gather(*(session(server) for _ in range(10)))
        assert sum(server.fault_counts.values()) >= 10
        assert len(server.messages_of("user1")) == 1

    run(scenario, chaos=True, chaos_rate=0.2)


def test_main_has_a_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--emails-per-minute" in capsys.readouterr().out


def test_it_fetches_the_header_block_alone() -> None:
    async def scenario(server: ChaosImapServer) -> None:
        server.add_message("user0", MESSAGE)
        client = await Client.connect(server.port)
        await client.login()
        await client.send(client.protocol.select("INBOX"))
        events = await client.send(client.protocol.uid_fetch("1", "(UID BODY.PEEK[HEADER])"))
        header = MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 4]
        assert events[0].attributes["BODY[HEADER]"] == header
        assert server.messages_of("user0")[0].flags == set()
        await client.close()

    run(scenario)


def test_expunges_during_a_body_fetch_are_announced_and_recorded() -> None:
    async def scenario(server: ChaosImapServer) -> None:
        for _ in range(20):
            server.add_message("user0", MESSAGE)
        client = await Client.connect(server.port)
        await client.login()
        await client.send(client.protocol.select("INBOX"))
        events = await client.send(client.protocol.uid_fetch("1:*", "(UID BODY.PEEK[])"))
        tagged = events[-1]
        returned = {e.uid for e in events if isinstance(e, Fetch) and e.body is not None}
        nil = {e.uid for e in events if isinstance(e, Fetch) and e.body is None}
        expunges = [e for e in events if isinstance(e, Expunge)]
        left = {m.uid for m in server.messages_of("user0")}
        assert len(server.expunged) == len(expunges) == 20 - len(left) > 0
        assert returned == left and nil <= set(range(1, 21)) - left
        assert tagged.code == ("EXPUNGEISSUED",) and tagged.status in ("OK", "NO")
        events = await client.send(client.protocol.uid_search("UID 1:*"))
        assert SearchResult(tuple(sorted(left))) in events
        await client.close()

    run(scenario, expunge_rate=0.3)


def test_a_one_trip_fetch_by_range_answers_an_expunged_message_nil() -> None:
    """A partial body FETCH (a one-trip catch-up) takes part in expunge races; by a UID
    range the victim is always answered NIL under the partial's key, so the client learns
    its UID and records it."""

    async def scenario(server: ChaosImapServer) -> None:
        for _ in range(3):
            server.add_message("user0", MESSAGE)
        client = await Client.connect(server.port)
        await client.login()
        await client.send(client.protocol.select("INBOX"))
        items = "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[]<0.1001>)"
        events = await client.send(client.protocol.uid_fetch("2:*", items))
        fetches = {e.uid: e for e in events if isinstance(e, Fetch)}
        assert server.expunged == [("user0", "<m1@example.com>")]
        assert fetches[2].attributes == {"UID": 2, "BODY[]<0>": None}
        assert fetches[3].attributes["BODY[]<0>"] == MESSAGE[:1001]
        assert fetches[3].size == len(MESSAGE)
        assert events[-1].code == ("EXPUNGEISSUED",)
        await client.close()

    run(scenario, expunge_first=1)


def test_it_injects_only_the_faults_asked_for() -> None:
    server = ChaosImapServer(users=1, seed=1, chaos=True, chaos_rate=1.0, faults=[Fault.NO])
    assert {server.pick_fault("user0") for _ in range(50)} == {Fault.NO}
    assert ChaosImapServer(chaos=True, chaos_rate=1.0, faults=[]).pick_fault("user0") is None
