"""Which FETCH responses count as news of a flag change (engine/changewatch.py)."""

from __future__ import annotations

import pytest

from superimap.imap.events import Fetch
from superimap.imapclient.connection import _flag_update


@pytest.mark.parametrize(
    ("event", "counted"),
    [
        (Fetch(3, flags=("\\Seen",)), True),  # unsolicited, no UID (no QRESYNC)
        (Fetch(3, uid=5, flags=("\\Seen",), modseq=9), True),  # with QRESYNC
        (Fetch(3, uid=5, flags=(), body=b"x"), False),  # a body FETCH that asked for FLAGS
        (Fetch(3, uid=5, flags=(), attributes={"BODY[HEADER]": b"x"}), False),
        (Fetch(3, uid=5, size=10, flags=()), False),
        (Fetch(3, uid=5, size=10), False),
    ],
)
def test_flag_update(event, counted) -> None:
    assert _flag_update(event) is counted
