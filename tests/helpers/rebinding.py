"""DNS rebinding in tests: a scripted resolver at the I/O boundary (socket.getaddrinfo).

We cannot run a real rebinding DNS server (the system resolver is not ours to point
elsewhere), so names under ``.rebind.test`` answer from a script: each lookup returns the
next answer in its list, the last one for ever after. Every client (asyncio, aiohttp,
httpx2, imaplib, aiosmtplib) ends in socket.getaddrinfo, so each lookup is seen and counted.

The public addresses a script hands out are not on this machine, and a test must not reach
the internet: a connection to one of them is refused at once and recorded (at
socket.socket.connect, also the I/O boundary). Every other connection is real.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections import Counter
from collections.abc import Iterator

import pytest

PUBLIC = "93.184.216.34"  # a public address; connections to it are refused here, see above

_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect


class RebindingDns:
    def __init__(self) -> None:
        self._answers: dict[str, list[str]] = {}
        self.lookups: Counter[str] = Counter()
        self.public_connects: list[tuple[str, int]] = []

    def script(self, name: str, *answers: str) -> str:
        """Answer lookups of `name` with `answers` in turn; returns the name."""
        assert name.endswith(".rebind.test") and answers
        self._answers[name] = list(answers)
        return name

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
        if host not in self._answers:
            return _real_getaddrinfo(host, port, family, type, proto, flags)
        self.lookups[host] += 1
        answers = self._answers[host]
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        port = int(port or 0)
        if ":" in address:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    def connect(self, sock: socket.socket, address) -> None:
        if isinstance(address, tuple) and address[0] == PUBLIC:
            self.public_connects.append((address[0], address[1]))
            raise ConnectionRefusedError(errno.ECONNREFUSED, "refused (test network)")
        return _real_connect(sock, address)


@contextlib.contextmanager
def rebinding() -> Iterator[RebindingDns]:
    dns = RebindingDns()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", dns.getaddrinfo)
        # A plain function, so that it binds to each socket as a method does.
        patch.setattr(socket.socket, "connect", lambda sock, address: dns.connect(sock, address))
        yield dns
