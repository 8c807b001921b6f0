"""What an idle engine pays per refresh: ``leases.claim_mailboxes`` with N held mailboxes.

    python -m devtools.bench.leases [--mailboxes 1000,10000] [--refreshes 20] [--nodes 1]

A fresh SQLite database, N watchable users held by one node (as after start-up; with
--nodes K, split by rendezvous hashing among K live nodes, and the node measured holds
its share), then --refreshes delta refreshes as the supervisor makes every
ENGINE_REFRESH_SECONDS.
Prints the CPU of this process per refresh (SQLite runs in it), what that is as a share of
one core at one refresh per 5 s, and the time of each statement of one refresh.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

NODE = "bench-node"
LEASE = timedelta(seconds=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.leases")
    parser.add_argument("--mailboxes", default="1000,10000")
    parser.add_argument("--refreshes", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="superimap-bench-leases-") as tmp:
        _setup(Path(tmp))
        for count in [int(n) for n in args.mailboxes.split(",") if n]:
            _run(count, args.refreshes, args.nodes)
    return 0


def _setup(tmp: Path) -> None:
    os.environ.update(
        SUPERIMAP_ENV="test",
        VAR_DIR=str(tmp),
        DATABASE_URL=f"sqlite:///{tmp / 'bench.sqlite3'}",
        DJANGO_SETTINGS_MODULE="superimap.settings",
        LOG_LEVEL="WARNING",
    )
    from django.core.management import call_command

    from superimap.platform import prepare

    prepare.setup()
    call_command("migrate", interactive=False, verbosity=0)


def _run(count: int, refreshes: int, nodes: int) -> None:
    """A fresh set of ``count`` users, held by ``nodes`` nodes, refreshed ``refreshes`` times
    by one of them."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from superimap.engine import leases
    from superimap.partners.models import Partner

    Partner.objects.all().delete()  # and their connections and users
    _make_users(count)
    if nodes > 1:
        _share(nodes)
    claim = leases.claim_mailboxes(NODE, 20000, LEASE, True)
    held, as_of = len(claim.versions), claim.as_of

    def refresh():
        return leases.claim_mailboxes(NODE, 20000, LEASE, True, held, as_of - timedelta(seconds=2))

    started = time.process_time()
    for _ in range(refreshes):
        as_of = refresh().as_of
    per_refresh = (time.process_time() - started) / refreshes * 1000
    print(
        f"N={count}, nodes={nodes}, held={held}: {per_refresh:.1f} ms CPU per refresh, "
        f"{per_refresh / 5000 * 100:.2f} % of a core at one refresh per 5 s"
    )
    with CaptureQueriesContext(connection) as queries:
        refresh()
    for query in queries.captured_queries:
        print(f"  {float(query['time']) * 1000:6.1f} ms  {query['sql'][:100]}")


def _share(nodes: int) -> None:
    """Live heartbeats of nodes-1 other nodes, each owning its rendezvous share."""
    from django.utils import timezone

    from superimap.engine import leases
    from superimap.engine.models import EngineNode
    from superimap.mailboxes.models import MailboxUser

    now = timezone.now()
    names = [NODE] + [f"bench-other-{k}" for k in range(1, nodes)]
    EngineNode.objects.all().delete()
    for name in names[1:]:
        EngineNode.objects.create(
            node_id=name, host="", pid=0, version="", started_at=now, last_seen=now, capacity=20000
        )
    ids = list(MailboxUser.objects.order_by("id").values_list("id", flat=True))
    owners = leases.rendezvous_owners(ids, dict.fromkeys(names, 20000))
    for name in names[1:]:
        mine = [i for i in ids if owners[i] == name]
        for start in range(0, len(mine), 500):
            MailboxUser.objects.filter(id__in=mine[start : start + 500]).update(owner_node=name)


def _make_users(count: int) -> None:
    from devtools.testing.users import chaos_users
    from superimap.partners.models import Partner

    partner = Partner.objects.create(name="Bench", new_mail_webhook="http://127.0.0.1:9/hook")
    # Connected an hour ago, as idle mailboxes are: a refresh looks again at rows changed
    # since its previous one (minus a slack), which would be all of them right after the insert.
    chaos_users(partner, 1, count, idle_for=timedelta(hours=1))


if __name__ == "__main__":
    sys.exit(main())
