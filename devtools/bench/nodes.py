"""Many boxes without a master, simulated on one (issue 20 item 5).

    python -m devtools.bench.nodes [--mailboxes 20000] [--nodes 5] [--idle-seconds 60]
                                   [--out docs/bench/nodes.json]

A throwaway PostgreSQL (with pg_stat_statements), chaos IMAP servers holding the mailboxes
(plain IMAP, at most 10,000 users each: one process's open files), and ``--nodes`` engine
nodes, each a `superimap imap-client` process of its own standing in for a box
(ENGINE_PROCESSES=1, ENGINE_NODE_NAME=node-K, the default refresh, lease and login limits).
It measures, in this order:

- start (a cold start: every node started at once, no mailbox owned): seconds until every
  mailbox is in IDLE with owners settled, logins per mailbox (1.0: nobody logged in to a
  mailbox it then handed over), each node's share against an equal one;
- idle: PostgreSQL statements per idle mailbox per minute over ``--idle-seconds`` (the
  calls counted by pg_stat_statements, the bench's own left out; and transactions from
  pg_stat_database);
- join: node-(N+1) starts; which mailboxes changed owner (rendezvous: only those the joiner
  ranks first should), how long until every mailbox is in IDLE again;
- leave: kill -9 of node-2 (a box that dies); the same, against the takeover time of issue 14
  (docs/performance.md: 3.0-4.0 s for 10 mailboxes).

For every phase the logins the chaos servers counted, sampled every POLL seconds, are checked
against the per-host login limit of the nodes that log in (IMAP_LOGIN_BURST_PER_HOST at once,
then IMAP_LOGINS_PER_SECOND_PER_HOST, per engine process). Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from devtools.bench.engine import ChaosServerProcess

PER_SERVER = 10_000
POLL = 0.5
# Owners unchanged this long (more than a refresh, ENGINE_REFRESH_SECONDS = 5) and every
# mailbox in IDLE: the nodes have settled.
STABLE_SECONDS = 7.0
SETTLE_TIMEOUT = 900.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.nodes")
    parser.add_argument("--mailboxes", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--out", default="bench-results/nodes.json")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        result = Bench(stack, args).run()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


class Outage:
    """Per mailbox, the longest time it was seen without IDLE (sampled every POLL s)."""

    def __init__(self, everyone: set[tuple[int, str]]) -> None:
        self.everyone = everyone
        self.since: dict[tuple[int, str], float] = {}
        self.longest: dict[tuple[int, str], float] = {}

    def sample(self, elapsed: float, idle: set[tuple[int, str]]) -> None:
        for user in self.everyone - idle:
            self.since.setdefault(user, elapsed)
        for user in [u for u in self.since if u in idle]:
            gap = elapsed - self.since.pop(user)
            self.longest[user] = max(self.longest.get(user, 0.0), gap)

    def summary(self) -> dict:
        gaps = sorted(self.longest.values())
        if not gaps:
            return {"mailboxes": 0}
        return {
            "mailboxes": len(gaps),
            "p50_seconds": round(gaps[len(gaps) // 2], 2),
            "p99_seconds": round(gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))], 2),
            "max_seconds": round(gaps[-1], 2),
            "resolution_seconds": "about the sampling interval, " + str(POLL) + " s or more",
        }


class Bench:
    def __init__(self, stack: ExitStack, args: argparse.Namespace) -> None:
        from devtools.testing.postgres import PostgresServer

        self.args = args
        self.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="superimap-nodes-")))
        self.postgres = stack.enter_context(
            PostgresServer(shared_preload_libraries="pg_stat_statements", max_connections="300")
        )
        self.servers: list[ChaosServerProcess] = []
        self.users: list[int] = []  # users of each chaos server
        for k, start in enumerate(range(0, args.mailboxes, PER_SERVER)):
            folder = self.tmp / f"chaos-{k}"
            folder.mkdir()
            users = min(PER_SERVER, args.mailboxes - start)
            server = ChaosServerProcess(folder, users, tls=False)
            stack.callback(server.stop)
            self.servers.append(server)
            self.users.append(users)
        self.nodes: dict[str, subprocess.Popen] = {}
        self.live: set[str] = set()
        stack.callback(self._stop_nodes)
        self.env = {
            **os.environ,
            "SUPERIMAP_ENV": "test",
            "DATABASE_URL": self.postgres.url,
            "VAR_DIR": str(self.tmp / "var"),
            "ALLOW_LOOPBACK_IMAP": "true",
            "ENGINE_PROCESSES": "1",
            # The chaos servers stand in for a provider: its default limits, not loopback's.
            "IMAP_LOGIN_LIMITS": "loopback=500/50",
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "superimap.settings",
        }

    # --- setup ------------------------------------------------------------------------------

    def _setup(self) -> None:
        os.environ.update({k: v for k, v in self.env.items() if k != "LOG_LEVEL"})
        from django.core.management import call_command

        from superimap.platform import prepare

        prepare.setup()
        call_command("migrate", interactive=False, verbosity=0)
        from devtools.testing.users import chaos_users
        from superimap.partners.models import Partner

        for k, server in enumerate(self.servers):
            partner = Partner.objects.create(
                name=f"Bench {k}", new_mail_webhook="http://127.0.0.1:9/hook"
            )
            users = min(PER_SERVER, self.args.mailboxes - k * PER_SERVER)
            chaos_users(partner, server.port, users)
        self._sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def _sql(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.postgres.url, autocommit=True) as db:
            cursor = db.execute(sql)
            return cursor.fetchall() if cursor.description else []

    # --- nodes ------------------------------------------------------------------------------

    def _start(self, name: str) -> None:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the node
        self.nodes[name] = subprocess.Popen(
            [sys.executable, "-m", "superimap.cli", "imap-client"],
            env={**self.env, "ENGINE_NODE_NAME": name},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def _stop_nodes(self) -> None:
        for proc in self.nodes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.nodes.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # --- observing ---------------------------------------------------------------------------

    def _owners(self) -> dict[int, str]:
        return dict(self._sql("SELECT id, owner_node FROM mailboxes_mailboxuser"))

    def _chaos(self) -> tuple[int, int]:
        """(users in IDLE, logins so far) over every chaos server."""
        idle = logins = 0
        for server in self.servers:
            stats = server.stats()
            idle += stats["idle"]
            logins += stats.get("logins", 0)
        return idle, logins

    def _idlers(self) -> set[tuple[int, str]]:
        """(chaos server, user) of every user in IDLE."""
        found = set()
        for k, server in enumerate(self.servers):
            server.send("idlers")
            found.update((k, user) for user in json.loads(server.read_line()))
        return found

    def _settle(self, names: set[str], takers: int) -> dict:
        """Poll until every mailbox is in IDLE and owned by one of ``names``, with owners
        unchanged for STABLE_SECONDS. ``takers``: nodes expected to log in, for the bound."""
        started = time.monotonic()
        _, logins_before = self._chaos()
        samples: list[tuple[float, int, int]] = []
        stable_since: float | None = None
        last: Counter | None = None
        first_drop = None
        everyone = {(k, f"user{i}") for k, count in enumerate(self.users) for i in range(count)}
        outage = Outage(everyone)
        while True:
            elapsed = time.monotonic() - started
            idle, logins = self._chaos()
            outage.sample(elapsed, self._idlers())
            counts = Counter(self._owners().values())
            samples.append((round(elapsed, 2), idle, logins - logins_before))
            if idle < self.args.mailboxes and first_drop is None:
                first_drop = elapsed
            settled = idle == self.args.mailboxes and set(counts) == names
            if settled and counts == last:
                stable_since = stable_since if stable_since is not None else elapsed
                if elapsed - stable_since >= STABLE_SECONDS:
                    break
            else:
                stable_since = None
            last = counts
            if elapsed > SETTLE_TIMEOUT:
                raise SystemExit(f"not settled after {SETTLE_TIMEOUT} s: {counts}, idle {idle}")
            time.sleep(POLL)
        return {
            # The first sample of the final stable run: every mailbox in IDLE, owners final.
            "settled_after_seconds": round(stable_since, 2),
            "first_unwatched_at_seconds": None if first_drop is None else round(first_drop, 2),
            # The longest any mailbox can have been without IDLE in this phase: from the
            # first drop below all-in-IDLE to the settled state.
            "unwatched_at_most_seconds": None
            if first_drop is None
            else round(stable_since - first_drop, 2),
            "logins": samples[-1][2],
            "login_bound_held": self._bound_held(samples, takers),
            "unwatched_per_mailbox": outage.summary(),
            "samples": samples,
        }

    def _bound_held(self, samples: list[tuple[float, int, int]], takers: int) -> dict:
        from django.conf import settings

        burst = settings.IMAP_LOGIN_BURST_PER_HOST
        rate = settings.IMAP_LOGINS_PER_SECOND_PER_HOST
        worst = 0.0
        for elapsed, _, logins in samples:
            bound = takers * (burst + rate * elapsed)
            worst = max(worst, logins / bound)
        return {
            "burst_per_host": burst,
            "per_second_per_host": rate,
            "nodes_logging_in": takers,
            "most_of_the_bound_used": round(worst, 3),
            "held": worst <= 1.0,
        }

    # --- phases -------------------------------------------------------------------------------

    def run(self) -> dict:
        load_before = os.getloadavg()
        self._setup()
        from superimap.engine import leases

        n = self.args.nodes
        names = {f"node-{k}" for k in range(1, n + 1)}
        for name in sorted(names):
            self._start(name)
        start = self._settle(names, takers=n)
        owners = self._owners()
        shares = Counter(owners.values())
        equal = self.args.mailboxes / n
        deviation = max(abs(count - equal) / equal for count in shares.values())
        ids = sorted(owners)
        expected = leases.rendezvous_owners(ids, dict.fromkeys(names, 20_000))
        print(
            f"start: {dict(shares)}, settled in {start['settled_after_seconds']} s, "
            f"{start['logins']} logins",
            flush=True,
        )

        self.live = names
        idle = self._idle_statements()
        print(
            f"idle: {idle['statements_per_mailbox_per_minute']} statements/mailbox/min", flush=True
        )

        joiner = f"node-{n + 1}"
        before = owners
        self._start(joiner)
        join = self._settle(names | {joiner}, takers=1)
        after = self._owners()
        join.update(self._moves(before, after, names | {joiner}, joiner=joiner))
        print(
            f"join: moved {join['moved']}, settled in {join['settled_after_seconds']} s", flush=True
        )

        leaver = "node-2"
        before = after
        self.nodes[leaver].send_signal(signal.SIGKILL)
        self.nodes[leaver].wait(10)
        survivors = (names | {joiner}) - {leaver}
        leave = self._settle(survivors, takers=len(survivors))
        after = self._owners()
        leave.update(self._moves(before, after, survivors, leaver=leaver))
        print(
            f"leave: moved {leave['moved']}, settled in {leave['settled_after_seconds']} s",
            flush=True,
        )

        summary = {
            "mailboxes": self.args.mailboxes,
            "nodes": n,
            "shares": dict(sorted(shares.items())),
            "largest_deviation_from_equal": round(deviation, 4),
            "within_10_percent": deviation <= 0.10,
            "start_matches_rendezvous": sum(owners[i] == expected[i] for i in ids),
            "cold_start": {
                "all_idle_after_seconds": start["settled_after_seconds"],
                "logins": start["logins"],
                "logins_per_mailbox": round(start["logins"] / self.args.mailboxes, 3),
                "login_bound_held": start["login_bound_held"],
            },
            "statements_per_idle_mailbox_per_minute": idle["statements_per_mailbox_per_minute"],
            "transactions_per_idle_mailbox_per_minute": idle["transactions_per_mailbox_per_minute"],
            "join": {k: v for k, v in join.items() if k != "samples"},
            "leave": {k: v for k, v in leave.items() if k != "samples"},
            "takeover_issue14_seconds": "3.0-4.0 (10 mailboxes, docs/performance.md)",
            # A live node freed by another (its heartbeat stalled past the lease) shows here
            # besides the one killed on purpose.
            "declared_dead_in_logs": self._deaths(),
        }
        return {
            "command": "python -m devtools.bench.nodes " + " ".join(sys.argv[1:]),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cores": os.cpu_count(),
            "summary": summary,
            "start": start,
            "idle": idle,
            "join": join,
            "leave": leave,
        }

    def _deaths(self) -> list[str]:
        lines = []
        for name in sorted(self.nodes):
            text = (self.tmp / f"{name}.log").read_text(errors="replace")
            lines += [line[:160] for line in text.splitlines() if " is dead" in line]
        return lines

    def _idle_statements(self) -> dict:
        """pg_stat_statements calls and pg_stat_database transactions over --idle-seconds,
        leaving out this bench's own statements (they mention pg_stat)."""
        seconds = self.args.idle_seconds
        xact = (
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
        self._sql("SELECT pg_stat_statements_reset()")
        ((before,),) = self._sql(xact)
        time.sleep(seconds)
        ((after,),) = self._sql(xact)
        rows = self._sql(
            "SELECT query, calls FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat%' "
            "ORDER BY calls DESC"
        )
        calls = sum(c for _, c in rows)
        per_minute = 60.0 / seconds / self.args.mailboxes
        # The few statements of this bench (3) and the reads of pg_stat_database count as
        # transactions: left out.
        transactions = max(0, after - before - 3)
        return {
            "seconds": seconds,
            "method": "pg_stat_statements calls (all statements of every connection), and "
            "pg_stat_database xact_commit + xact_rollback, over the window",
            "statements": calls,
            "statements_per_mailbox_per_minute": round(calls * per_minute, 5),
            # Most are per node, not per mailbox: the heartbeat and name-lock check every
            # second, the refresh every 5 s, the pool's connection health checks.
            "statements_per_node_per_second": round(calls / seconds / len(self.live), 2),
            "transactions": transactions,
            "transactions_per_mailbox_per_minute": round(transactions * per_minute, 5),
            "top_statements": [{"calls": c, "query": q[:160]} for q, c in rows[:12]],
        }

    def _moves(
        self,
        before: dict[int, str],
        after: dict[int, str],
        names: set[str],
        joiner: str | None = None,
        leaver: str | None = None,
    ) -> dict:
        from superimap.engine import leases

        moved = [i for i in before if before[i] != after[i]]
        ids = sorted(after)
        expected = leases.rendezvous_owners(ids, dict.fromkeys(names, 20_000))
        result = {
            "moved": len(moved),
            "share_of_all": round(len(moved) / len(before), 4),
            "fair_share": round(len(before) / len(names if joiner else names | {leaver}), 1),
            "matches_rendezvous": sum(after[i] == expected[i] for i in ids),
        }
        if joiner:
            result["moved_elsewhere_than_the_joiner"] = sum(1 for i in moved if after[i] != joiner)
        if leaver:
            result["moved_that_the_leaver_did_not_hold"] = sum(
                1 for i in moved if before[i] != leaver
            )
            result["leaver_held"] = sum(1 for i in before if before[i] == leaver)
        return result


if __name__ == "__main__":
    sys.exit(main())
