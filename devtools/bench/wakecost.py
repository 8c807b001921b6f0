"""What one idle wake-up costs on this box (issue 20 item 4, design.md 8 "Idle cost").

    python -m devtools.bench.wakecost [--out bench-results/wakecost.json] [--rounds 2]

An idle engine is a few threads that wake now and then (the heartbeat every second, the
refresh and the loop's tick every 5 s) and do a little work. On a virtual machine the work
done after a long sleep can cost many times the same work done often, because the memory
it touches went cold meanwhile. This measures it, with nothing of the engine:

- pages: a thread sleeps ``interval``, then reads one byte of each of 1,000 pages (4 MiB
  touched before), twice: µs for the first pass and for the second (warm);
- wake: a thread doing ``Event.wait(interval)`` and nothing else; psycopg: the same plus one
  ``conn.execute(...).fetchall()`` on a throwaway PostgreSQL; pq: the same statement through
  ``conn.pgconn.exec_params`` (libpq, no cursor): the thread's CPU per wake-up in µs (from
  /proc/self/task/<tid>/schedstat, ns precise).

Each at intervals of 1 s, 0.1 s and 0.01 s. The load average is in the result: run it both
on a quiet box and beside other work to see how the cost moves with them.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from devtools.testing.postgres import PostgresServer

PAGE = 4096
PAGES = 1000
INTERVALS = ((1.0, 10), (0.1, 40), (0.01, 200))  # (seconds, wake-ups)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The CPU cost of an idle wake-up.")
    parser.add_argument("--out", default="bench-results/wakecost.json")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    results = []
    with PostgresServer() as pg, psycopg.connect(pg.url, autocommit=True) as conn:
        for _ in range(args.rounds):
            for interval, count in INTERVALS:
                first, second = _pages(interval, max(3, count // 4))
                row = {
                    "interval_s": interval,
                    "pages_first_pass_us": round(first),
                    "pages_second_pass_us": round(second),
                    "wake_us": round(_per_wake(interval, count, lambda: None)),
                    "psycopg_us": round(
                        _per_wake(interval, count, lambda: _psycopg_statement(conn))
                    ),
                    "pq_us": round(_per_wake(interval, count, lambda: _pq_statement(conn))),
                    "load_average": round(os.getloadavg()[0], 2),
                }
                print(json.dumps(row), flush=True)
                results.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "pages": PAGES,
        "runs": results,
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def _psycopg_statement(conn: psycopg.Connection) -> None:
    conn.execute("SELECT now(), %s::text", ("x",)).fetchall()


def _pq_statement(conn: psycopg.Connection) -> None:
    result = conn.pgconn.exec_params(b"SELECT now(), $1::text", [b"x"])
    [result.get_value(0, 0), result.get_value(0, 1)]


def _thread_cpu_ns(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/schedstat") as stat:
        return int(stat.read().split()[0])


def _in_thread(body) -> float:
    out: list[float] = []
    thread = threading.Thread(target=lambda: out.append(body()))
    thread.start()
    thread.join()
    return out[0]


def _per_wake(interval: float, count: int, work) -> float:
    """The thread's CPU per wake-up (µs): Event.wait(interval), then work()."""

    def body() -> float:
        tid = threading.get_native_id()
        event = threading.Event()
        before = _thread_cpu_ns(tid)
        for _ in range(count):
            event.wait(interval)
            work()
        return (_thread_cpu_ns(tid) - before) / count / 1000

    return _in_thread(body)


def _pages(interval: float, count: int) -> tuple[float, float]:
    """µs to read one byte of each of PAGES pages after a sleep of ``interval``, and again
    at once (mean of ``count`` rounds)."""

    def body() -> tuple[float, float]:
        memory = bytearray(os.urandom(PAGES * PAGE))
        view = memoryview(memory)
        offsets = range(0, PAGES * PAGE, PAGE)
        first = second = 0.0
        for _ in range(count):
            time.sleep(interval)
            started = time.perf_counter()
            total = sum(view[offset] for offset in offsets)
            middle = time.perf_counter()
            total += sum(view[offset] for offset in offsets)
            first += middle - started
            second += time.perf_counter() - middle
        return first / count * 1e6, second / count * 1e6

    return _in_thread(body)


if __name__ == "__main__":
    main()
