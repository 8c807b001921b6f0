"""engine/nodelock.py in one process: one holder per node name (SQLite: a lock file)."""

from __future__ import annotations

import pytest

from superimap.config import ConfigError
from superimap.engine.nodelock import NodeLock, advisory_key


def test_a_second_holder_of_a_name_is_refused_until_the_first_releases(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    first = NodeLock("node-1").acquire()
    with pytest.raises(ConfigError, match="ENGINE_NODE_NAME: 'node-1' is in use"):
        NodeLock("node-1").acquire()
    other = NodeLock("node-2").acquire()  # another name is another lock
    assert first.still_held() and other.still_held()
    first.release()
    NodeLock("node-1").acquire().release()
    other.release()


def test_names_that_differ_only_in_unsafe_characters_get_different_files(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    a, b = NodeLock("host:1").acquire(), NodeLock("host@1").acquire()
    assert len(list(tmp_path.glob("engine-node-*.lock"))) == 2
    a.release()
    b.release()


def test_advisory_keys_are_stable_signed_bigints() -> None:
    key = advisory_key("node-1")
    assert key == advisory_key("node-1") != advisory_key("node-2")
    assert -(2**63) <= key < 2**63
