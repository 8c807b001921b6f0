"""CPU per webhook POST of three HTTP clients against the same receiver process.

    python -m devtools.bench.webclients --out bench-results/webclients.json [--posts 5000]
        [--runs 3] [--concurrency 50] [--rate 1000]

Clients, each run in turn (alternated, --runs times), on uvloop, all POSTing the same ~2.3 KB
signed webhook bodies:
- aiohttp_session: the webhook client as it was until issue 20 (delivery/http.py before
  webclient.py): a ClientSession on netguard's CheckedConnector, a session ClientTimeout,
  `session.post(..., allow_redirects=False)` and the 1 KiB excerpt read.
- aiohttp_tuned: the same session with what can be trimmed: URL parsed once (yarl.URL),
  DummyCookieJar, skip_auto_headers, no per-request options, `read()` of the answer.
- webclient: delivery.http.post() through make_session(): the keep-alive HTTP/1.1 protocol
  of delivery/webclient.py (what the worker uses now).
Phases: `backlog` POSTs --posts as fast as --concurrency allows; `paced` POSTs --posts at
--rate per second (the issue's 1,000/s). CPU is the client process's process_time over the
phase, divided by the POSTs; the receiver (an aiohttp server answering 200 "OK") runs in its
own process so it does not share the client's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import uvloop
import yarl
from aiohttp import web

from superimap.delivery import http
from superimap.platform.netguard import CheckedConnector


def _receiver_process(conn) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="OK")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(site._server.sockets[0].getsockname()[1])  # noqa: SLF001
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await runner.cleanup()

    uvloop.run(main())


def _requests(count: int) -> list[tuple[bytes, dict]]:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 28)[:1600]
    payload = {
        "provider": "PLAIN",
        "user_tag": "bench",
        "sha1": "0" * 40,
        "folder": "INBOX",
        "raw_rfc822": body,
        "envelope": {"subject": "bench", "message_id": "<bench@superimap.test>"},
    }
    return [
        http.render_request(
            {**payload, "uid": i},
            event_id=f"{i:032x}",
            kind="new_mail",
            api_key="k" * 32,
            webhook_secrets=("whsec_" + "a" * 32,),
            timestamp=int(time.time()),
        )
        for i in range(count)
    ]


class _AiohttpSession:
    """delivery/http.py's make_session() and post() as they were before webclient.py."""

    def __init__(self, concurrency: int, tuned: bool) -> None:
        connector = CheckedConnector(
            allow_private=True, limit=concurrency, limit_per_host=concurrency
        )
        extra: dict = {}
        if tuned:
            extra = {
                "cookie_jar": aiohttp.DummyCookieJar(),
                "skip_auto_headers": ("Accept", "Accept-Encoding"),
                "auto_decompress": False,
            }
        self.tuned = tuned
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=10),
            headers={"User-Agent": http.USER_AGENT},
            **extra,
        )
        self.urls: dict[str, yarl.URL] = {}

    async def post(self, url: str, raw: bytes, headers: dict) -> int:
        if self.tuned:
            target = self.urls.get(url) or self.urls.setdefault(url, yarl.URL(url))
            async with self.session.post(target, data=raw, headers=headers) as response:
                await response.read()
                return response.status
        async with self.session.post(
            url, data=raw, headers=headers, allow_redirects=False
        ) as response:
            chunks, size = [], 0
            while size < 1024:
                chunk = await response.content.read(1024 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return response.status

    async def close(self) -> None:
        await self.session.close()


class _WebClient:
    def __init__(self, concurrency: int) -> None:
        self.session = http.make_session(concurrency, 10, allow_private=True)

    async def post(self, url: str, raw: bytes, headers: dict) -> int:
        result = await http.post(self.session, url, raw, headers)
        return result.status_code or 0

    async def close(self) -> None:
        await self.session.close()


def _client(name: str, concurrency: int):
    if name == "webclient":
        return _WebClient(concurrency)
    return _AiohttpSession(concurrency, tuned=name == "aiohttp_tuned")


async def _phase(name: str, url: str, requests, concurrency: int, rate: int | None) -> dict:
    client = _client(name, concurrency)
    try:
        # Warm-up: open the connections outside the measurement.
        await asyncio.gather(*(client.post(url, *requests[i]) for i in range(concurrency)))
        loop = asyncio.get_running_loop()
        pending = list(reversed(requests))
        statuses: list[int] = []
        slots = asyncio.Semaphore(concurrency)

        async def one(raw: bytes, headers: dict) -> None:
            try:
                statuses.append(await client.post(url, raw, headers))
            finally:
                slots.release()

        started, cpu = time.monotonic(), time.process_time()
        tasks = []
        start_at = loop.time()
        sent = 0
        while pending:
            if rate:
                # Paced in 10 ms ticks (as rows reach a worker in batches, not one by one).
                delay = start_at + sent / rate - loop.time()
                if delay > 0.01:
                    await asyncio.sleep(delay)
            await slots.acquire()
            tasks.append(asyncio.create_task(one(*pending.pop())))
            sent += 1
        await asyncio.gather(*tasks)
        seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu
    finally:
        await client.close()
    if statuses.count(200) != len(requests):
        raise RuntimeError(f"{name}: {len(requests) - statuses.count(200)} posts not answered 200")
    return {
        "client": name,
        "phase": "paced" if rate else "backlog",
        "posts": len(requests),
        "seconds": round(seconds, 3),
        "posts_per_second": round(len(requests) / seconds, 1),
        "cpu_ms_per_post": round(cpu_seconds * 1000 / len(requests), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.webclients")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rate", type=int, default=1000, help="paced phase; 0: no paced phase")
    parser.add_argument(
        "--clients", default="aiohttp_session,aiohttp_tuned,webclient", help="comma-separated"
    )
    args = parser.parse_args(argv)
    clients = args.clients.split(",")
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    receiver = context.Process(target=_receiver_process, args=(child_end,), daemon=True)
    receiver.start()
    runs: list[dict] = []
    try:
        url = f"http://127.0.0.1:{parent_end.recv()}/new-mail"
        requests = _requests(args.posts)
        for run in range(args.runs):
            for rate in [None] + ([args.rate] if args.rate else []):
                for name in clients:
                    result = uvloop.run(_phase(name, url, requests, args.concurrency, rate))
                    result.update(run=run + 1, load_average=[round(x, 2) for x in os.getloadavg()])
                    print(json.dumps(result), flush=True)
                    runs.append(result)
        parent_end.send("stop")
    finally:
        receiver.join(5)
        if receiver.is_alive():
            receiver.kill()
    summary = {}
    for name in clients:
        for phase in ("backlog", "paced"):
            values = [
                r["cpu_ms_per_post"] for r in runs if (r["client"], r["phase"]) == (name, phase)
            ]
            rates = [
                r["posts_per_second"] for r in runs if (r["client"], r["phase"]) == (name, phase)
            ]
            if values:
                summary[f"{name}/{phase}"] = {
                    "cpu_ms_per_post_median": round(statistics.median(values), 4),
                    "cpu_ms_per_post_runs": values,
                    "posts_per_second_runs": rates,
                }
    document = {
        "benchmark": "webclients",
        "command": "python -m devtools.bench.webclients " + " ".join(argv or sys.argv[1:]),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cpus": os.cpu_count(),
        "concurrency": args.concurrency,
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
