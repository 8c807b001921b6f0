"""Where an engine's memory per TLS mailbox goes: a tracemalloc diff per mailbox.

    python -m devtools.bench.tlsmemory [--mailboxes 2000] [--top 30] [--frames 1]

Starts the chaos IMAP server (its own process, implicit TLS) and the real Engine on uvloop
with N loopback TLS mailboxes on SQLite, snapshots tracemalloc before the engine starts and
once every mailbox is in IDLE, and prints the growth per mailbox by file and by line (bytes
and objects; with --frames N > 1 also by the N innermost frames: who called what
allocated). The Python objects only: OpenSSL's and libuv's own allocations are not
traced, and uvloop's 256 KiB TLS read buffer per connection (PyMem_RawMalloc, the line of
create_connection in imapclient/connection.py) counts whole although only its touched
pages are resident; devtools/bench/tlsfloor.py measures a bare connection's RSS.
design.md 4.13 quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import tracemalloc
from pathlib import Path

from devtools.bench.engine import (
    ChaosServerProcess,
    _make_mailboxes,
    _setup_django,
    raise_open_files,
)

UVLOOP_READ_BUFFER = 256 * 1024


async def measure(count: int, top: int, frames: int = 1) -> None:
    from superimap.engine.supervisor import Engine
    from superimap.imapclient import LoginLimiter
    from superimap.platform.dbpool import DbPool

    pool = DbPool()
    engine = Engine(
        pool,
        "tlsmemory",
        capacity=count,
        login_limiter=LoginLimiter(host_limits={"127.0.0.1": (count, float(count))}),
    )
    await pool.run(lambda: None)
    gc.collect()
    tracemalloc.start(frames)
    before = tracemalloc.take_snapshot()
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    while sum(1 for status in engine._current.values() if status == "idle") < count:
        await asyncio.sleep(1.0)
    await asyncio.sleep(engine.refresh_interval + 2)  # statuses flushed
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stop.set()
    await asyncio.wait_for(task, 60)
    pool.shutdown()
    for key in ("filename", "lineno") + (("traceback",) if frames > 1 else ()):
        stats = after.compare_to(before, key)
        total = sum(stat.size_diff for stat in stats)
        big = sum(
            stat.size_diff for stat in stats if stat.size_diff / count > UVLOOP_READ_BUFFER / 2
        )
        print(
            f"== by {key}: {total / count:,.0f} bytes per mailbox, "
            f"{(total - big) / count:,.0f} without the line(s) holding uvloop's read buffers"
        )
        for stat in stats[:top]:
            per_mailbox = f"{stat.size_diff / count:10,.0f} B {stat.count_diff / count:6.2f}"
            where = (
                stat.traceback
                if key != "traceback"
                else " <- ".join(
                    f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}"
                    for frame in reversed(stat.traceback)
                )
            )
            print(f"{per_mailbox} objects  {where}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="tracemalloc growth per idle TLS mailbox.")
    parser.add_argument("--mailboxes", type=int, default=2000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--frames", type=int, default=1, help="frames kept per allocation")
    args = parser.parse_args(argv)
    raise_open_files(65536)
    with tempfile.TemporaryDirectory(prefix="tlsmemory-") as directory:
        var_dir = Path(directory)
        server = ChaosServerProcess(var_dir, args.mailboxes, True)
        try:
            _setup_django(var_dir, f"sqlite:///{var_dir / 'bench.sqlite3'}")
            _make_mailboxes(args.mailboxes, server.port, True)
            import uvloop

            uvloop.run(measure(args.mailboxes, args.top, args.frames))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
