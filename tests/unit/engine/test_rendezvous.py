"""Bounded-load rendezvous hashing: how engine nodes split mailboxes without a master."""

from collections import Counter

from superimap.engine.leases import rendezvous_owners

USERS = list(range(1, 3001))


def test_it_gives_every_user_to_exactly_one_node_the_same_way_each_time():
    nodes = {"a:1": 5000, "b:2": 5000, "c:3": 5000}
    first = rendezvous_owners(USERS, nodes)
    assert first == rendezvous_owners(USERS, dict(reversed(list(nodes.items()))))
    assert set(first) == set(USERS)


def test_a_joining_node_takes_about_its_share_and_moves_nothing_else():
    before = rendezvous_owners(USERS, {"a:1": 5000, "b:2": 5000})
    after = rendezvous_owners(USERS, {"a:1": 5000, "b:2": 5000, "c:3": 5000})
    moved = [u for u in USERS if before[u] != after[u]]
    assert all(after[u] == "c:3" for u in moved)
    assert 800 < len(moved) < 1200  # ~1/3 of 3,000


def test_a_full_node_sends_the_rest_to_the_next_choice():
    owners = rendezvous_owners(USERS, {"a:1": 500, "b:2": 5000})
    counts = Counter(owners.values())
    assert counts == {"a:1": 500, "b:2": 2500}


def test_users_beyond_all_capacity_stay_unassigned():
    owners = rendezvous_owners(USERS, {"a:1": 1000, "b:2": 1000})
    assert len(owners) == 2000


def _shares(users: int, names: list[str]) -> Counter:
    return Counter(
        rendezvous_owners(list(range(1, users + 1)), dict.fromkeys(names, 50_000)).values()
    )


def test_five_nodes_named_alike_get_equal_shares_within_ten_percent():
    """CRC32 ranked node-1 .. node-5 at -28 % to +25 % of equal on 2,000 mailboxes and
    -11 % to +25 % on 20,000 (issue 20 item 5)."""
    for names in ([f"node-{k}" for k in range(1, 6)], [f"box-{k}" for k in range(1, 6)]):
        for users in (2_000, 20_000):
            equal = users / len(names)
            shares = _shares(users, names)
            assert all(abs(count - equal) <= 0.10 * equal for count in shares.values()), shares


def test_a_leaving_node_moves_only_its_own_mailboxes():
    names = [f"node-{k}" for k in range(1, 7)]
    before = rendezvous_owners(USERS, dict.fromkeys(names, 5000))
    after = rendezvous_owners(USERS, dict.fromkeys([n for n in names if n != "node-2"], 5000))
    moved = [u for u in USERS if before[u] != after[u]]
    assert moved and all(before[u] == "node-2" for u in moved)
    assert len(moved) == Counter(before.values())["node-2"]
