"""Node leases (engine/leases.py): a node's heartbeat row is the lease on every mailbox it
owns, so a refresh writes one row whatever it holds, and a node's mailboxes are freed only
when its heartbeat is older than the lease."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from superimap.engine.leases import Pacing, announce, beat, claim_mailboxes, remove_node
from superimap.engine.models import EngineNode
from superimap.engine.nodelock import NodeLock
from superimap.mailboxes.models import MailboxUser
from tests.helpers.engine import loopback_users

LEASE = timedelta(seconds=60)


def claim(node: str, capacity: int = 100, claimed=None, **kwargs):
    """A refresh of ``node``: a delta one when ``claimed`` (the previous Claim) is given."""
    if claimed is not None:
        kwargs.update(known=len(claimed.versions), since=claimed.as_of)
    return claim_mailboxes(node, capacity, LEASE, True, **kwargs)


def owners() -> dict[str, int]:
    counts: dict[str, int] = {}
    for owner in MailboxUser.objects.values_list("owner_node", flat=True):
        counts[owner] = counts.get(owner, 0) + 1
    return counts


def age(node: str, seconds: float) -> None:
    """Make ``node``'s last heartbeat ``seconds`` old, as if it stopped refreshing then."""
    last_seen = timezone.now() - timedelta(seconds=seconds)
    EngineNode.objects.filter(node_id=node).update(last_seen=last_seen)


@pytest.fixture
def users(mail_partner):
    loopback_users(mail_partner, 1, 30)
    return list(MailboxUser.objects.order_by("id").values_list("id", flat=True))


def _writes(queries, table: str) -> list[str]:
    return [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith(("UPDATE", "INSERT", "DELETE")) and table in q["sql"]
    ]


@pytest.mark.parametrize("count", [5, 30])
def test_it_renews_one_row_per_idle_refresh_whatever_it_holds(mail_partner, count):
    loopback_users(mail_partner, 1, count)
    first = claim("a")
    assert len(first.versions) == count
    with CaptureQueriesContext(connection) as queries:
        second = claim("a", claimed=first)
    assert second.versions == {} and second.gone == frozenset()
    assert _writes(queries, "mailboxes_mailboxuser") == []
    assert len(_writes(queries, "engine_enginenode")) == 1
    assert len(queries.captured_queries) <= 9  # the same handful at 5 and at 30 mailboxes


def test_it_publishes_its_sessions_and_start_in_the_heartbeat(users):
    started = timezone.now() - timedelta(minutes=5)
    claim("a", sessions=7, started_at=started)
    node = EngineNode.objects.get(node_id="a")
    assert (node.mailboxes_held, node.capacity, node.started_at) == (7, 100, started)


def test_a_live_node_keeps_its_mailboxes_however_long_they_were_held(users):
    claim("a")
    age("a", 40)  # older than ENGINE_NODE_ALIVE_SECONDS, younger than the lease
    taken = claim("b")
    assert taken.versions == {}
    assert owners() == {"a": 30}


def test_a_dead_nodes_mailboxes_go_to_the_next_node_after_the_lease(users):
    first = claim("a")
    age("a", 61)
    taken = claim("b")
    assert len(taken.versions) == 30 and owners() == {"b": 30}
    assert not EngineNode.objects.filter(node_id="a").exists()
    # The dead node, back (a stalled process): it finds its row gone and reads everything.
    back = claim("a", claimed=first)
    assert back.complete and back.versions == {}
    assert EngineNode.objects.filter(node_id="a").exists()


def test_a_node_that_renewed_in_time_is_not_freed(users):
    first = claim("a")
    age("a", 59)
    assert claim("b").versions == {}
    again = claim("a", claimed=first)
    assert not again.complete and owners() == {"a": 30}


def test_mailboxes_of_a_name_without_a_heartbeat_row_are_freed(users):
    MailboxUser.objects.filter(id__in=users[:10]).update(owner_node="ghost")
    taken = claim("a")
    assert len(taken.versions) == 30 and owners() == {"a": 30}
    assert not EngineNode.objects.filter(node_id="ghost").exists()


def test_a_delta_refresh_releases_an_archived_user_and_picks_up_a_new_one(users, mail_partner):
    first = claim("a")
    MailboxUser.objects.get(id=users[3]).archive()
    newcomer = MailboxUser.objects.create(
        connection=MailboxUser.objects.get(id=users[0]).connection,
        tag="newcomer",
        login_username="newcomer",
        password="pw",
        connected_at=timezone.now(),
    )
    delta = claim("a", claimed=first)
    assert not delta.complete
    assert delta.gone == frozenset({users[3]})
    assert set(delta.versions) == {newcomer.id}
    assert MailboxUser.objects.get(id=users[3]).owner_node == ""


def test_a_joining_node_gets_its_share_handed_over(users):
    first = claim("a")
    claim("b")  # alive now, but everything is still a's
    assert owners() == {"a": 30}
    handing = claim("a", claimed=first)
    assert handing.handover and not set(handing.versions) & handing.handover
    MailboxUser.objects.filter(id__in=handing.handover).update(owner_node="")
    taken = claim("b")
    assert set(taken.versions) == set(handing.handover)
    assert owners() == {"a": 30 - len(handing.handover), "b": len(handing.handover)}


def test_watched_mailboxes_are_handed_over_at_the_pace_and_the_rest_later(users):
    """With Pacing, a refresh hands over only its part of the pace of the watched
    mailboxes; the next refreshes (nothing else changed) hand over the rest."""
    first = claim("a")
    claim("b")
    pacing = Pacing(watching=frozenset(users), per_refresh=4)
    handed: set[int] = set()
    previous = first
    for _ in range(30):
        handing = claim("a", claimed=previous, pacing=pacing)
        assert len(handing.handover) <= 4
        assert not set(handing.versions) & handing.handover
        MailboxUser.objects.filter(id__in=handing.handover).update(owner_node="")
        handed |= handing.handover
        previous = handing
        if not handing.handover:
            break
    everything = claim("a", pacing=None)
    assert handed and not everything.handover, "all of b's share went, 4 per refresh"
    assert owners()["a"] == 30 - len(handed)


def test_removing_a_node_frees_its_mailboxes_and_row(users):
    claim("a")
    remove_node("a")
    assert owners() == {"": 30}
    assert not EngineNode.objects.exists()


def test_an_idle_refresh_beside_another_node_does_not_rank_every_mailbox(users):
    first = claim("a")
    claim("b")
    handing = claim("a", claimed=first)
    MailboxUser.objects.filter(id__in=handing.handover).update(owner_node="")
    claim("b")
    with CaptureQueriesContext(connection) as queries:
        idle = claim("a", claimed=handing)
    assert idle.versions == {} and idle.gone == frozenset() and idle.handover == frozenset()
    reads = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith("SELECT") and "mailboxes_mailboxuser" in q["sql"]
    ]
    # Only rows changed since the last refresh, and unowned ones: no scan of every mailbox.
    assert reads and all('"owner_node" =' in sql or '"updated_at" >=' in sql for sql in reads)


GRACE = timedelta(seconds=3)


def test_a_node_whose_name_lock_is_free_is_freed_before_the_lease(users, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    lock = NodeLock("a").acquire()
    claim("a", name_lock="flock")
    age("a", 4)  # overdue by more than the grace, far from the 60 s lease
    assert claim("b", lock_grace=GRACE).versions == {}  # its lock is held: alive
    assert owners() == {"a": 30}
    lock.release()  # what the kernel does when the process dies (kill -9 included)
    taken = claim("b", lock_grace=GRACE)
    assert len(taken.versions) == 30 and taken.freed == ("a",)
    assert owners() == {"b": 30}


def test_a_free_lock_with_a_fresh_heartbeat_is_not_death(users, settings, tmp_path):
    """A live node whose lock connection broke takes the lock back at its next beat."""
    settings.VAR_DIR = tmp_path
    NodeLock("a").acquire().release()
    claim("a", name_lock="flock")
    age("a", 1)
    assert claim("b", lock_grace=GRACE).versions == {}
    assert claim("c").versions == {}  # without lock_grace: only the lease counts
    assert owners() == {"a": 30}


def test_a_node_without_a_name_lock_waits_for_the_lease(users, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    claim("a")
    age("a", 30)
    assert claim("b", lock_grace=GRACE).versions == {}
    assert owners() == {"a": 30}


def test_a_beat_names_the_live_and_the_dead_nodes(users):
    claim("a")
    claim("b")
    claim("c")
    age("c", 61)  # past the lease
    seen = beat("a", LEASE, None, node_alive=timedelta(seconds=30))
    assert seen.present and seen.dead == ("c",) and seen.live == {"a", "b"}
    remove_node("a")
    assert not beat("a", LEASE, None).present  # freed by another node: refresh at once


def test_a_joining_node_keeps_what_it_holds_and_claims_nothing_unowned(users):
    claim("a", capacity=10)
    announce("b", 100, timezone.now(), "")
    assert claim("b", take_unowned=False).versions == {}
    assert owners() == {"a": 10, "": 20}
    taken = claim("b")  # the join wait is over: its share of the unowned ones
    assert len(taken.versions) > 0 and owners()["b"] == len(taken.versions)


def _scans_every_mailbox(queries) -> bool:
    """A SELECT of mailboxes neither by owner nor by updated_at: every watchable one."""
    return any(
        q["sql"].startswith("SELECT")
        and "mailboxes_mailboxuser" in q["sql"]
        and '"owner_node" =' not in q["sql"]
        and '"updated_at" >=' not in q["sql"]
        for q in queries.captured_queries
    )


def test_a_periodic_read_back_ranks_every_mailbox_again_only_at_the_recheck(users):
    """read_all (the engine's read-back each minute) returns every held row but ranks
    nothing again when nothing changed; recheck (every 10 min) does, and hands over a
    mailbox held against the ranking whose change the deltas missed."""
    first = claim("a")
    claim("b")
    handing = claim("a", claimed=first)
    MailboxUser.objects.filter(id__in=handing.handover).update(owner_node="")
    claim("b")
    settled = claim("a", claimed=handing)
    held = set(MailboxUser.objects.filter(owner_node="a").values_list("id", flat=True))
    # One of b's taken back behind the deltas' back (update() leaves updated_at alone).
    stray = min(handing.handover)
    MailboxUser.objects.filter(id=stray).update(owner_node="a")
    with CaptureQueriesContext(connection) as queries:
        again = claim("a", claimed=settled, read_all=True, recheck=False)
    assert again.complete and set(again.versions) == held | {stray}
    assert again.handover == frozenset() and not _scans_every_mailbox(queries)
    with CaptureQueriesContext(connection) as queries:
        checked = claim("a", claimed=again, read_all=True, recheck=True)
    assert checked.complete and checked.handover == {stray}
    assert set(checked.versions) == held and _scans_every_mailbox(queries)
