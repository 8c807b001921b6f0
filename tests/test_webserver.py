"""webserver.MemoryReturn: freed memory goes back to the system after a burst of connections."""

from __future__ import annotations

from superimap import webserver


def test_it_trims_once_a_burst_has_mostly_ended():
    calls = []
    memory = webserver.MemoryReturn()
    memory.trim = calls.append
    for open_now in range(1, 1001):
        memory.opened(open_now)
    for open_now in range(999, 250, -1):
        memory.closed(open_now)
    assert calls == []  # still three quarters of the burst open
    for open_now in range(250, -1, -1):
        memory.closed(open_now)
    assert calls == [0]  # once, not at every close
    for open_now in range(1, 50):  # small traffic afterwards: no trims
        memory.opened(open_now)
        memory.closed(open_now - 1)
    assert calls == [0]


def test_it_knows_the_c_library_here():
    assert webserver.MemoryReturn().trim is not None
