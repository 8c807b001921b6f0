"""What the overview's rollups and the latency histograms add per mail, in CPU.

    python -m devtools.bench.rollupcost --out docs/bench/rollupcost.json

The engine and worker benchmarks (bench.engine, bench.delivery) measure about 0.3-1 ms of
CPU per mail with a noise of 10 % or more on a shared machine, far more than what is
measured here, so this measures the added code itself: per new mail, what
``Engine.record_persisted`` now does (push -> commit for the histogram and the rollup);
per webhook outcome, the worker's ``_observe`` (response-time and commit -> 2xx histograms
and the rollup). CPU time (time.process_time) over --rounds batches of 100.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.rollupcost")
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=Path("bench-results/rollupcost.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("SUPERIMAP_ENV", "test")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "superimap.settings")
    from superimap.platform import prepare

    prepare.setup()
    result = {
        "benchmark": "rollupcost",
        "engine_us_per_new_mail": round(_engine(args.rounds), 2),
        "worker_us_per_outcome": round(_worker(args.rounds), 2),
        "load_average_1m": os.getloadavg()[0],
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _engine(rounds: int) -> float:
    from superimap.platform import rollups
    from superimap.platform.metrics import PUSH_TO_COMMIT
    from superimap.sync.persist import FetchedMessage

    recorder = rollups.Recorder()
    now = datetime.now(UTC).replace(microsecond=0)
    seen = now.timestamp() + 0.2
    messages = [
        FetchedMessage(uid=i, size=1, internal_date=now, raw=b"x", seen_at=seen) for i in range(100)
    ]
    started = time.process_time()
    for _ in range(rounds):
        pushed = [m.pushed_at() for m in messages]  # in the group write
        clock = time.time()  # Engine.record_persisted from here
        push = [max(0.0, clock - p) for p in pushed]
        for seconds in push:
            PUSH_TO_COMMIT.observe(seconds)
        recorder.record_new_mails(len(push), push)
    return (time.process_time() - started) / (rounds * 100) * 1e6


def _worker(rounds: int) -> float:
    from superimap.delivery import queue, worker
    from superimap.delivery.http import PostResult
    from superimap.platform import rollups

    claimed = queue.Claimed(
        id=1,
        event_id="e",
        kind="new_mail",
        attempt=1,
        url="http://127.0.0.1:9/",
        payload_json="{}",
        sha1=None,
        api_key="k",
        webhook_secrets=(),
        created_at=datetime.now(UTC),
    )
    outcomes = [
        queue.Outcome(claimed, PostResult(200 if i % 10 else 500, "", "", 12), claimed.created_at)
        for i in range(100)
    ]
    saved, rollups.RECORDER = rollups.RECORDER, rollups.Recorder()
    try:
        started = time.process_time()
        for _ in range(rounds):
            worker._observe(outcomes)
        return (time.process_time() - started) / (rounds * 100) * 1e6
    finally:
        rollups.RECORDER = saved


if __name__ == "__main__":
    raise SystemExit(main())
