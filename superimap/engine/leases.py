"""Which mailboxes this node watches: node leases and rendezvous hashing (design.md 8).

The lease is held per node, not per mailbox: a mailbox row's ``owner_node`` is valid while
that node's heartbeat row (EngineNode) is renewed. So a refresh renews one row, whatever
the number of mailboxes held, and reads only what changed. A node whose heartbeat is
older than the lease loses its row and its mailboxes in one transaction of whichever node
sees it first; the dead node's sessions are fenced by ``owner_node`` (store._owned) and
its process finds its heartbeat row gone at its next refresh.

A node need not wait out the lease when its process is provably dead: its heartbeat row
names the lock that keeps its name (engine/nodelock.py), and once that lock is free and
the heartbeat (renewed every second by beat()) is ``lock_grace`` old, it is freed the same
way.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from django.db import OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from superimap import __version__
from superimap.engine import nodelock
from superimap.engine.models import EngineNode
from superimap.mailboxes.models import MailboxUser

ID_BATCH = 500  # ids per statement: well under every backend's parameter limit
# rendezvous_owners() of the last refresh, kept while neither the nodes nor the
# watchable mailboxes change: ~10 ms of hashing per 10,000 mailboxes and node.
_ranked: tuple[tuple, dict[int, str]] | None = None
# The live nodes each node id saw at its previous refresh (one id per process but in tests).
_last_nodes: dict[str, dict[str, int]] = {}
# Node ids whose last handover was cut short by pacing (the rest goes at the next refresh).
_handover_left: set[str] = set()


def alive_nodes(now: datetime, node_id: str, capacity: int, alive: timedelta) -> dict[str, int]:
    """{node id: capacity} of the nodes with a recent heartbeat, this one included."""
    nodes = dict(
        EngineNode.objects.filter(last_seen__gte=now - alive).values_list("node_id", "capacity")
    )
    nodes[node_id] = capacity
    return nodes


def rendezvous_owners(user_ids: list[int], nodes: dict[str, int]) -> dict[int, str]:
    """Bounded-load rendezvous hashing (design.md 8): each user, in id order, goes to the
    highest-ranked node that still has room. Every node computes the same answer from the
    same heartbeats, so no master is needed; a joining node takes ~1/n of the users."""
    load = dict.fromkeys(nodes, 0)
    owners: dict[int, str] = {}
    names = sorted(nodes)
    for user_id in user_ids:
        ranked = sorted(names, key=lambda n: (_score(n, user_id), n), reverse=True)
        for name in ranked:
            if load[name] < nodes[name]:
                owners[user_id] = name
                load[name] += 1
                break
    return owners


def _score(name: str, user_id: int) -> bytes:
    """The rank of node ``name`` for ``user_id``: 8 bytes of BLAKE2b of "name:id". Not CRC32,
    which is linear: node names that differ in one character (box-1, box-2, ...) and ids in
    sequence ranked far from evenly (shares of -28 % to +25 % of equal among five such
    nodes; issue 20 item 5, tests/unit/engine/test_rendezvous.py)."""
    return hashlib.blake2b(f"{name}:{user_id}".encode(), digest_size=8).digest()


@dataclass(frozen=True)
class Pacing:
    """How fast watched mailboxes are handed over to a node that joined (issue 20 item 5).

    A joining node logs in to what it is handed no faster than the per-host login limit
    allows (IMAP_LOGINS_PER_SECOND_PER_HOST); handed all at once, its share waited up to a
    minute unwatched (3,359 mailboxes at 50 logins/s: devtools/bench/nodes.py). So the
    nodes hand over, per refresh and between them, about as many watched mailboxes as it can
    log in to meanwhile (``per_refresh`` per receiving node); sessions not watching yet
    (still waiting for a login token, after a cold start) go at once: nothing to lose."""

    watching: frozenset[int]
    per_refresh: int


def paced(
    handover: frozenset[int], pacing: Pacing | None, senders: int, owners: dict[int, str]
) -> frozenset[int]:
    """Of ``handover``, the mailboxes to hand over now: those not watched, and of the watched
    ones, per receiving node (``owners``: the node each ranks first), the lowest ids up to
    this node's part of the pace (the receiver may get as much from each of ``senders``)."""
    if pacing is None:
        return handover
    part = max(1, -(-pacing.per_refresh // max(1, senders)))
    given: dict[str, int] = {}
    now = []
    for user_id in sorted(handover):
        if user_id in pacing.watching:
            receiver = owners.get(user_id, "")
            if given.get(receiver, 0) >= part:
                continue
            given[receiver] = given.get(receiver, 0) + 1
        now.append(user_id)
    return frozenset(now)


def _cached_owners(user_ids: list[int], nodes: dict[str, int]) -> dict[int, str]:
    global _ranked
    key = (tuple(sorted(nodes.items())), len(user_ids), hash(tuple(user_ids)))
    if _ranked is None or _ranked[0] != key:
        _ranked = (key, rendezvous_owners(user_ids, nodes))
    return _ranked[1]


def watchable(allow_loopback: bool) -> Q:
    rule = Q(archived=False, connected_at__isnull=False, paused_at__isnull=True) & (
        ~Q(password="") | ~Q(oauth_refresh_token="")
    )
    if not allow_loopback:
        rule &= Q(connection__provider__loopback_only=False)
    return rule


def unchanged_since(since: datetime, allow_loopback: bool) -> bool:
    """No mailbox row saved since ``since`` and no watchable mailbox unowned: a delta
    claim_mailboxes() would find nothing to release, claim, rank or report (the engine's
    idle refresh, design.md 8: the heartbeat renews the lease and watches the nodes)."""
    changed, unowned = _change_queries(since, allow_loopback)
    if changed.exists():
        return False
    return not unowned.exists()


def _change_queries(since: datetime, allow_loopback: bool):
    """What unchanged_since() and ChangeProbe ask: a mailbox row saved since ``since``; a
    watchable mailbox unowned."""
    return (
        MailboxUser.objects.filter(updated_at__gte=since),
        MailboxUser.objects.filter(watchable(allow_loopback), owner_node=""),
    )


# A placeholder for ``since`` while ChangeProbe compiles its statement (found in the params).
_SINCE_MARK = datetime(2001, 2, 3, 4, 5, 6, 789, tzinfo=UTC)


class ChangeProbe:
    """unchanged_since() as one statement, compiled once by the ORM (in a thread with a
    Django connection: compiling needs the backend) and run by the heartbeat thread on its
    name lock's psycopg connection (PostgreSQL) every refresh interval, in the same wake-up
    as a beat: the idle refresh then needs no database call of its own (design.md 8,
    "Idle cost"). Like the beat it goes straight to libpq: the constant parameters are
    bound into the statement once (psycopg's client-side binding), ``since`` is its one
    ``$1`` (epoch seconds), so a probe builds no cursor and adapts nothing."""

    def __init__(self, allow_loopback: bool) -> None:
        self.allow_loopback = allow_loopback
        changed, unowned = _change_queries(_SINCE_MARK, allow_loopback)
        sql1, params1 = changed.values("pk")[:1].query.sql_with_params()
        sql2, params2 = unowned.values("pk")[:1].query.sql_with_params()
        sql = f"SELECT (EXISTS ({sql1})) OR (EXISTS ({sql2}))"
        mark = connection.ops.adapt_datetimefield_value(_SINCE_MARK)
        connection.ensure_connection()
        bind = psycopg.ClientCursor(connection.connection).mogrify
        bound, mark_literal = bind(sql, [*params1, *params2]), bind("%s", [mark])
        if bound.count(mark_literal) != 1:
            raise RuntimeError(f"change probe: {mark_literal} not once in {bound}")
        self.sql = bound.replace(mark_literal, "to_timestamp($1::float8)").encode()

    def unchanged_on(self, psycopg_connection, since: datetime) -> bool:
        """unchanged_since(since) on a psycopg connection (PostgreSQL, autocommit)."""
        result = _pq_rows(
            psycopg_connection, self.sql, [repr(since.timestamp()).encode()], "change probe"
        )
        return result.get_value(0, 0) == b"f"


def _pq_rows(psycopg_connection, sql: bytes, params: list[bytes], what: str):
    """Run ``sql`` straight through libpq on a psycopg connection (autocommit): its result
    rows, or psycopg.OperationalError naming ``what``. The heartbeat's beat and change probe
    run this way, not through a cursor (beat_on says why)."""
    pgconn = psycopg_connection.pgconn
    result = pgconn.exec_params(sql, params)
    if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
        message = (result.error_message or pgconn.error_message).decode(errors="replace")
        raise psycopg.OperationalError(f"{what}: {message.strip()}")
    return result


def handover_pending(node_id: str) -> bool:
    """The last handover of ``node_id`` was cut short by pacing: the rest goes next time."""
    return node_id in _handover_left


@dataclass(frozen=True)
class Claim:
    """What claim_mailboxes() changed. ``complete``: ``versions`` is everything this node
    holds ({id: session_version, only ever compared for equality}); otherwise a delta:
    ``versions`` holds the mailboxes newly claimed or whose updated_at moved since
    ``since``, and ``gone`` those no longer held."""

    versions: dict[int, str]
    gone: frozenset[int]
    complete: bool
    as_of: datetime
    # Still ours in the database, but ranked to another live node: stop their sessions,
    # then release_mailboxes() them, so two nodes never watch one mailbox at once.
    handover: frozenset[int] = frozenset()
    # Dead nodes whose mailboxes this call freed.
    freed: tuple[str, ...] = ()


def claim_mailboxes(
    node_id: str,
    capacity: int,
    lease: timedelta,
    allow_loopback: bool,
    known: int | None = None,
    since: datetime | None = None,
    node_alive: timedelta = timedelta(seconds=30),
    sessions: int = 0,
    started_at: datetime | None = None,
    name_lock: str = "",
    lock_grace: timedelta | None = None,
    pacing: Pacing | None = None,
    take_unowned: bool = True,
    read_all: bool = False,
    recheck: bool = True,
) -> Claim:
    """Renew this node's lease (its heartbeat row), free dead nodes' mailboxes, release,
    hand over and claim, in one transaction.

    ``known``: how many mailboxes the caller believes it holds after the last call, and
    ``since``: report held mailboxes whose updated_at is at least this. Without them, or
    when this node's heartbeat row was gone (another node found it dead and freed its
    mailboxes), every held row is read back, orphans are looked for, and the released
    rows are searched among all held ones; otherwise only among rows changed since
    ``since`` (every change that makes a mailbox unwatchable saves updated_at).
    ``sessions``, ``started_at`` and ``name_lock`` (the kind of lock this node's process
    holds its name with): published in the node's heartbeat row. ``lock_grace``: also free
    the nodes whose name lock is free and whose heartbeat is older than this (None: only
    by the lease; a caller whose own lock was not held steadily cannot judge). ``pacing``:
    hand watched mailboxes over a few at a time (Pacing). ``take_unowned``: False while
    the node is still joining (design.md 8, cold start): it keeps what it holds but claims
    nothing yet. ``read_all``: read every held row back although ``known`` and ``since``
    are given (the engine's periodic read-back); ``recheck``: also look for orphans and
    rank every watchable mailbox again then, as a first call does. Without it the ranking
    is redone only when something it depends on changed (the live nodes, a mailbox
    row, unowned or released mailboxes): at 100,000 mailboxes the periodic re-rank read
    every id in every node each minute, most of an idle node's CPU (issue 20 item 4).
    """
    now = timezone.now()
    rule = watchable(allow_loopback)
    with transaction.atomic():
        # First, so a node freeing this one (below, in its own transaction) either sees
        # the renewal or, holding the row lock, frees us first and we see the row gone.
        lapsed = not _renew(node_id, now, capacity, sessions, started_at or now, name_lock)
        fresh = known is None or since is None or lapsed
        full = fresh or read_all
        recheck = fresh or (full and recheck)
        if recheck:
            _free_orphans()
        freed = _free_dead_nodes(node_id, now - lease, lock_grace and now - lock_grace)
        mine = MailboxUser.objects.filter(owner_node=node_id).order_by()
        changed = mine if full else mine.filter(updated_at__gte=since)
        released = list(changed.exclude(rule).values_list("id", flat=True))
        for start in range(0, len(released), ID_BATCH):
            mine.filter(id__in=released[start : start + ID_BATCH]).update(owner_node="")
        held = mine.count() if full else known - len(released)
        nodes = alive_nodes(now, node_id, capacity, node_alive)
        unowned = list(
            MailboxUser.objects.filter(rule, owner_node="")
            .order_by("id")
            .values_list("id", flat=True)
        )
        desired: set[int] | None = None
        handover: frozenset[int] = frozenset()
        if len(nodes) > 1 and (
            recheck
            or unowned
            or released
            or nodes != _last_nodes.get(node_id)
            or node_id in _handover_left
            or MailboxUser.objects.filter(updated_at__gte=since).exists()
        ):
            # Who ranks first changes only with the nodes or the watchable mailboxes; and
            # with nothing unowned there is nothing to take: otherwise this is skipped.
            ids = list(MailboxUser.objects.filter(rule).order_by("id").values_list("id", flat=True))
            owners = _cached_owners(ids, nodes)
            desired = {user_id for user_id, owner in owners.items() if owner == node_id}
            held_now = mine.values_list("id", flat=True)
            wanted = frozenset(i for i in held_now if i not in desired and i in owners)
            handover = paced(wanted, pacing, len(nodes) - 1, owners)
            _handover_left.discard(node_id)
            if handover != wanted:
                _handover_left.add(node_id)
        _last_nodes[node_id] = nodes
        free = capacity - held + len(handover)
        claimed: list[int] = []
        if take_unowned and free > 0 and unowned:
            candidates = unowned if desired is None else [i for i in unowned if i in desired]
            candidates = candidates[:free]
            for start in range(0, len(candidates), ID_BATCH):
                batch = candidates[start : start + ID_BATCH]
                taken = MailboxUser.objects.filter(owner_node="", id__in=batch).update(
                    owner_node=node_id
                )
                if taken:
                    claimed.extend(batch)
        # The session's version, not updated_at: only changes that matter to the IMAP
        # session (credentials, server, folder, a sweep) restart it. updated_at still finds
        # the rows to look at (every such change moves it too).
        version = "session_version"
        if full:
            versions = dict(mine.values_list("id", version))
            for user_id in handover:
                versions.pop(user_id, None)
            return Claim(
                versions, frozenset(), complete=True, as_of=now, handover=handover, freed=freed
            )
        versions = dict(changed.values_list("id", version))
        for start in range(0, len(claimed), ID_BATCH):
            # Claimed rows are ours unless another node raced us to them (PostgreSQL).
            versions.update(
                mine.filter(id__in=claimed[start : start + ID_BATCH]).values_list("id", version)
            )
        for user_id in handover:
            versions.pop(user_id, None)
        return Claim(
            versions,
            frozenset(released) | handover,
            complete=False,
            as_of=now,
            handover=handover,
            freed=freed,
        )


def _renew(
    node_id: str,
    now: datetime,
    capacity: int,
    sessions: int,
    started_at: datetime,
    name_lock: str = "",
) -> bool:
    """Renew this node's heartbeat, its lease; False if the row was gone (re-created)."""
    fields = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "version": __version__,
        "started_at": started_at,
        "last_seen": now,
        "capacity": capacity,
        "mailboxes_held": sessions,
        "name_lock": name_lock,
    }
    if EngineNode.objects.filter(node_id=node_id).update(**fields):
        return True
    EngineNode.objects.create(node_id=node_id, **fields)
    return False


@dataclass(frozen=True)
class Beat:
    """What one beat saw: whether this node's row was there (else another node freed it),
    the other nodes claim_mailboxes() would free now, and the names of the live nodes
    (heartbeat within ``node_alive``, this one included when its row was there)."""

    present: bool
    dead: tuple[str, ...]
    live: frozenset[str]


def beat(
    node_id: str,
    lease: timedelta,
    lock_grace: timedelta | None,
    node_alive: timedelta = timedelta(seconds=30),
) -> Beat:
    """Every second, for a node with a name lock, from its heartbeat thread
    (engine/heartbeat.py): renew the heartbeat (last_seen only), and read every node's row
    once (a handful of rows) to name the dead ones and the live ones. The engine refreshes
    at once when its row was gone, a node died, or the live nodes changed.

    Plain SQL on the thread's Django connection: the ORM compiled both statements at every
    beat, most of an idle engine's CPU (issue 20 item 4). On PostgreSQL the heartbeat uses
    beat_on() on its name lock's connection instead (one round trip)."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE engine_enginenode SET last_seen = %s WHERE node_id = %s",
            [connection.ops.adapt_datetimefield_value(now), node_id],
        )
        renewed = cursor.rowcount > 0
        cursor.execute(
            "SELECT node_id, last_seen, name_lock FROM engine_enginenode WHERE node_id <> %s",
            [node_id],
        )
        rows = cursor.fetchall()
    return _beat_of(rows, renewed, node_id, now, lease, lock_grace, node_alive)


# One statement: renew this node's row and read the others' (a data-modifying CTE's rows
# are not seen by the outer SELECT, so this node's own row comes back through ``mine``), at
# the libpq level ($n parameters, text in and out, last_seen as epoch seconds): beat_on().
_BEAT_PQ = (
    b"WITH mine AS (UPDATE engine_enginenode SET last_seen = to_timestamp($1::float8) "
    b"WHERE node_id = $2 RETURNING node_id) "
    b"SELECT node_id, extract(epoch FROM last_seen)::text, name_lock FROM engine_enginenode "
    b"WHERE node_id <> $2 UNION ALL SELECT node_id, NULL, NULL FROM mine"
)


def beat_on(
    lock_connection,
    node_id: str,
    lease: timedelta,
    lock_grace: timedelta | None,
    node_alive: timedelta = timedelta(seconds=30),
) -> Beat:
    """beat() in one statement on ``lock_connection``, the psycopg connection (autocommit)
    that holds this node's PostgreSQL advisory lock (NodeLock.run_held): the statement
    going through proves the lock held, so a beat is one round trip where the lock check,
    the UPDATE and the SELECT were three.

    It goes straight to libpq (``pgconn.exec_params``, which releases the GIL while it
    waits): psycopg's cursor, adapters and row makers were most of a beat's Python, and a
    beat once a second after a second of sleep finds that code cold: 0.45-0.65 ms of CPU
    per beat where execute() took 0.84-1.58 ms on this box (design.md 8, "Idle cost")."""
    now = timezone.now()
    result = _pq_rows(
        lock_connection, _BEAT_PQ, [repr(now.timestamp()).encode(), node_id.encode()], "heartbeat"
    )
    renewed = False
    others = []
    for row in range(result.ntuples):
        name, seen, lock = (result.get_value(row, column) for column in range(3))
        if seen is None:
            renewed = True
            continue
        when = datetime.fromtimestamp(float(seen), UTC)
        others.append((name.decode(), when, lock.decode() if lock is not None else None))
    return _beat_of(others, renewed, node_id, now, lease, lock_grace, node_alive)


def _beat_of(
    rows: list,
    renewed: bool,
    node_id: str,
    now: datetime,
    lease: timedelta,
    lock_grace: timedelta | None,
    node_alive: timedelta,
) -> Beat:
    """The Beat of the other nodes' rows (node_id, last_seen, name_lock)."""
    rows = [(name, _aware(last_seen), name_lock) for name, last_seen, name_lock in rows]
    dead = _dead_among(rows, node_id, now - lease, lock_grace and now - lock_grace)
    live = {name for name, last_seen, _ in rows if last_seen >= now - node_alive}
    if renewed:
        live.add(node_id)
    return Beat(renewed, tuple(sorted(dead)), frozenset(live))


def _aware(value) -> datetime:
    """A timestamp read by plain SQL: SQLite gives a naive UTC datetime (or its text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def announce(node_id: str, capacity: int, started_at: datetime, name_lock: str) -> None:
    """Write this node's heartbeat row before it claims anything, so the nodes starting
    with it count it among the live ones from the first beat (design.md 8, cold start)."""
    _renew(node_id, timezone.now(), capacity, 0, started_at, name_lock)


def _dead(node_id: str, expired: datetime, unlocked_before: datetime | None) -> dict:
    """{name: the last_seen it must be older than} of the nodes dead by the lease, or by a
    free name lock and a heartbeat older than ``unlocked_before``."""
    latest = max(expired, unlocked_before) if unlocked_before is not None else expired
    rows = (
        EngineNode.objects.exclude(node_id=node_id)
        .filter(last_seen__lt=latest)
        .values_list("node_id", "last_seen", "name_lock")
    )
    return _dead_among(list(rows), node_id, expired, unlocked_before)


def _dead_among(
    rows: list[tuple[str, datetime, str]],
    node_id: str,
    expired: datetime,
    unlocked_before: datetime | None,
) -> dict:
    """_dead() of the heartbeat rows ``rows`` (node_id, last_seen, name_lock)."""
    dead: dict[str, datetime] = {}
    quiet = []
    for name, last_seen, name_lock in rows:
        if last_seen < expired:
            dead[name] = expired
        elif name_lock and unlocked_before is not None and last_seen < unlocked_before:
            quiet.append((name, name_lock))
    if quiet:
        for name in nodelock.free_names(quiet, own=node_id):
            dead[name] = unlocked_before
    return dead


def _free_dead_nodes(
    node_id: str, expired: datetime, unlocked_before: datetime | None = None
) -> tuple[str, ...]:
    """Delete the heartbeat rows older than the lease, or of a process proven dead (_dead),
    and free their nodes' mailboxes.

    The DELETE re-checks last_seen under the row lock (PostgreSQL re-evaluates its WHERE
    on the row's newest version), so a node that renewed in the meantime keeps its row.
    Django sends it as one DELETE … WHERE because nothing refers to EngineNode; a foreign
    key to it would make Django select the rows first and delete by id, losing the check."""
    freed = []
    for name, before in _dead(node_id, expired, unlocked_before).items():
        try:
            with transaction.atomic(), _LockWait(FREE_LOCK_WAIT):
                deleted, _ = EngineNode.objects.filter(node_id=name, last_seen__lt=before).delete()
                if deleted:
                    MailboxUser.objects.filter(owner_node=name).update(owner_node="")
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            # A frozen node's open transaction holds its rows: freed once it ends
            # (idle_in_transaction_session_timeout, settings.py); this refresh goes on.
            continue
        if deleted:
            freed.append(name)
    return tuple(freed)


FREE_LOCK_WAIT = "1s"
LOCK_NOT_AVAILABLE = "55P03"


class _LockWait:
    """PostgreSQL: wait at most ``limit`` for row locks inside the current transaction
    (SET LOCAL, put back on exit); elsewhere nothing (SQLite has one writer)."""

    def __init__(self, limit: str) -> None:
        self.limit = limit
        self.before: str | None = None

    def __enter__(self) -> None:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_setting('lock_timeout')")
                (self.before,) = cursor.fetchone()
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [self.limit])

    def __exit__(self, *exc) -> None:
        if self.before is not None and exc[0] is None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [self.before])


def _free_orphans() -> None:
    """Mailboxes owned by a name without a heartbeat row (deleted by hand, say) would
    never be freed: give each such name an expired row for _free_dead_nodes()."""
    owners = set(
        MailboxUser.objects.exclude(owner_node="")
        .order_by()
        .values_list("owner_node", flat=True)
        .distinct()
    )
    orphans = owners - set(EngineNode.objects.values_list("node_id", flat=True))
    if orphans:
        epoch = datetime(2000, 1, 1, tzinfo=UTC)
        EngineNode.objects.bulk_create(
            [
                EngineNode(
                    node_id=name, host="", pid=0, version="", started_at=epoch, last_seen=epoch
                )
                for name in orphans
            ],
            ignore_conflicts=True,
        )


def release_mailboxes(node_id: str, user_ids: list[int] | None = None) -> int:
    rows = MailboxUser.objects.filter(owner_node=node_id)
    if user_ids is not None:
        rows = rows.filter(id__in=user_ids)
    return rows.update(owner_node="")


def remove_node(node_id: str) -> None:
    with transaction.atomic():
        release_mailboxes(node_id)
        EngineNode.objects.filter(node_id=node_id).delete()
