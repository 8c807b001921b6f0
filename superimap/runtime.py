"""Running the long-lived services (web, engine, worker) in one asyncio event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

import uvicorn
import uvloop
from django.conf import settings
from prometheus_client import start_http_server

from superimap import __version__, healthz, rollupwriter
from superimap.delivery.wakeup import WakeListener, WakeSender
from superimap.delivery.worker import Worker
from superimap.engine.nodelock import NodeLock
from superimap.engine.supervisor import Engine
from superimap.metricsview import port_registry
from superimap.platform import children, fdlimit, malloc
from superimap.platform.dbpool import DbPool
from superimap.summary import Summary
from superimap.webserver import GuardedH11Protocol

log = logging.getLogger("superimap")


def node_id() -> str:
    """The worker's identity: one per process (the engine's is ENGINE_NODE_NAME)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: our stop event decides when to exit."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _install_signal_handlers(stop: asyncio.Event, parent_fd: int | None = None) -> None:
    """SIGINT/SIGTERM stop, a second one exits at once; so does the parent's pipe closing
    (`parent_fd`: this process is a supervised child, platform/children.py)."""
    loop = asyncio.get_running_loop()
    if parent_fd is not None:
        children.watch_parent(parent_fd, stop)

    def request_stop(signame: str) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signame)
            os._exit(1)
        log.info("%s received: stopping", signame)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop, sig.name)


async def serve(
    *,
    web: bool,
    engine: bool,
    worker: bool,
    host: str,
    port: int,
    on_listening: Callable[[], None] | None = None,
    node_lock=None,
    sock: socket.socket | None = None,
    supervisor: children.Supervisor | None = None,
    parent_fd: int | None = None,
    capacity: int | None = None,
) -> None:
    """Run the chosen services until SIGINT/SIGTERM; `on_listening` is called once the web
    server accepts connections (the start-up banner). `node_lock` holds the engine's node
    name for as long as the engine runs. `sock`: the web port, bound already
    (preflight.bind_web); without it uvicorn binds host:port itself. `supervisor`: child
    engine and worker processes this one starts and watches (platform/children.py);
    `parent_fd`: this process is such a child, and stops when that pipe closes.
    `capacity`: mailboxes the engine may hold (its open-files limit)."""
    stop = asyncio.Event()
    _install_signal_handlers(stop, parent_fd)
    pool = DbPool()
    node = node_id()
    _expose_metrics(web, supervisor is not None)
    tasks: list[asyncio.Task] = []
    if supervisor is not None:
        tasks.append(_supervise(supervisor, stop))
    announcer: asyncio.Task | None = None
    worker_service = None
    listener = sender = None
    if worker:
        worker_service = Worker(pool, node)
        healthz.runs("worker", node)
        # Woken by engines in other processes too (delivery/wakeup.py), not only by polling.
        listener = WakeListener(worker_service.wake)
        await listener.start()
        tasks.append(asyncio.create_task(worker_service.run(stop), name="worker"))
    if engine:
        sender = WakeSender(pool)
        healthz.runs("engine", settings.ENGINE_NODE_NAME)
        engine_service = Engine(
            pool,
            settings.ENGINE_NODE_NAME,
            on_new_deliveries=_wake_all(worker_service, sender),
            node_lock=node_lock,
            capacity=capacity,
            gc_freeze=True,
        )
        tasks.append(asyncio.create_task(engine_service.run(stop), name="engine"))
    if engine or worker:
        # One MinuteRollup row per minute of this process (the overview's charts).
        tasks.append(
            asyncio.create_task(
                rollupwriter.flush_loop(pool, node, stop, backlog=worker), name="rollups"
            )
        )
    if web:
        # The one import kept here: importing superimap.asgi builds the web application
        # (Django's ASGI handler and its middleware), which only a web process needs.
        from superimap.asgi import application

        server = _Server(web_config(application, host, port))
        tasks.append(asyncio.create_task(_run_web(server, stop, sock), name="web"))
        if on_listening is not None:
            announcer = asyncio.create_task(_when_started(server, on_listening))
        log.info(
            "SuperIMAP %s listening on http://%s:%d (dashboard /admin/, API /api/v1/)",
            __version__,
            host,
            port,
        )
    if worker or engine:
        summary = Summary(pool, engine_service if engine else None, worker_service)
        # Not among `tasks`: its end ends nothing; it stops with the others.
        summarizer = asyncio.create_task(summary.run(stop), name="summary")
    else:
        summarizer = None
    failed: list[BaseException] = []
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                failed.append(task.exception())
                if not isinstance(task.exception(), children.ChildFailed):  # cli.main says it
                    log.error("service %s failed: %r", task.get_name(), task.exception())
                stop.set()
    finally:
        stop.set()
        if announcer is not None:
            announcer.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if summarizer is not None:
            await asyncio.gather(summarizer, return_exceptions=True)
        if listener is not None:
            await listener.stop()
        if sender is not None:
            sender.close()
        pool.shutdown()
        log.info("SuperIMAP stopped")
    _raise_child_failure(failed)


def _raise_child_failure(failed: list[BaseException]) -> None:
    """A supervised child that keeps failing ends this process with its status (cli.main)."""
    for exc in failed:
        if isinstance(exc, children.ChildFailed):
            raise exc


def _supervise(supervisor: children.Supervisor, stop: asyncio.Event) -> asyncio.Task:
    engines = [c.env["ENGINE_NODE_NAME"] for c in supervisor.children if "imap-client" in c.args]
    if engines:
        healthz.runs("engine", ", ".join(engines))
    log.info("supervising %s", supervisor.describe())
    return asyncio.create_task(supervisor.run(stop), name="children")


def _wake_all(worker_service, sender) -> Callable[[], None]:
    """After the engine commits new deliveries: wake this process's worker, if any, and the
    workers of other processes."""

    def wake() -> None:
        if worker_service is not None:
            worker_service.wake()
        sender.notify()

    return wake


def _expose_metrics(web: bool, supervising: bool = False) -> None:
    if supervising and not web:
        return  # METRICS_PORT is the children's (child_plan())
    if settings.METRICS_PORT:
        # A port of its own on 127.0.0.1, no token: for an engine or worker on its own, and
        # for the web process in production without METRICS_TOKEN (its /metrics is off).
        registry = port_registry(with_database=web)
        start_http_server(settings.METRICS_PORT, addr="127.0.0.1", registry=registry)
        log.info("metrics on http://127.0.0.1:%d/metrics", settings.METRICS_PORT)


async def _when_started(server: uvicorn.Server, callback: Callable[[], None]) -> None:
    while not server.started:
        await asyncio.sleep(0.05)
    callback()


def web_config(application, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings. Forwarded headers (X-Forwarded-For, -Proto) are believed only
    from TRUSTED_PROXIES (none by default): uvicorn's own default trusts 127.0.0.1, so any
    local client could pose as any address and dodge the per-IP login lockout. The HTTP
    protocol caps connections, request heads and the time to send one (webserver.py)."""
    trusted = settings.TRUSTED_PROXIES
    return uvicorn.Config(
        application,
        host=host,
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=list(trusted) if trusted else [],
        server_header=False,
        http=GuardedH11Protocol,
        h11_max_incomplete_event_size=settings.WEB_MAX_HEADER_BYTES,
        timeout_keep_alive=5,
    )


async def _run_web(
    server: uvicorn.Server, stop: asyncio.Event, sock: socket.socket | None = None
) -> None:
    serving = asyncio.create_task(server.serve(sockets=[sock] if sock is not None else None))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopping.cancel()
    await serving
    if not stop.is_set():
        # uvicorn gave up by itself (e.g. the port is taken): stop everything.
        stop.set()
        raise RuntimeError(f"web server on port {server.config.port} stopped")


def run(**kwargs) -> None:
    """Run serve() in this process. Raises children.ChildFailed when a supervised child
    keeps failing (cli.main exits with its status)."""
    limit = fdlimit.raise_soft_limit()
    node_lock = None
    if kwargs.get("engine"):
        # Before the connections: their read buffers in their own mappings (design.md 4.13).
        malloc.fix_mmap_threshold()
        # A StartupError (ENGINE_NODE_NAME taken) stops the process with one line (cli.main).
        node_lock = NodeLock(settings.ENGINE_NODE_NAME).acquire()
        kwargs["capacity"] = limit.capacity(settings.MAX_USER_THREADS)
        log.info(
            "engine %s: %s", settings.ENGINE_NODE_NAME, limit.describe(settings.MAX_USER_THREADS)
        )
    try:
        uvloop.run(serve(**kwargs, node_lock=node_lock))
    finally:
        if node_lock is not None:
            node_lock.release()


def child_plan(engines: int, workers: int, *, metrics_after: int) -> list[children.Child]:
    """The children of a supervising process: ``engines`` `imap-client` processes named
    after ENGINE_NODE_NAME (children.engine_names) and ``workers`` `worker` processes, each
    running alone in its process. With METRICS_PORT, child k (from 0) gets
    METRICS_PORT + ``metrics_after`` + k.

    Each engine name is tried first (its lock taken and let go): a name held by a live
    process (a second `superimap up` on another port) stops this one with one line naming
    ENGINE_NODE_NAME and the holder's pid, before any child starts."""
    for name in children.engine_names(settings.ENGINE_NODE_NAME, engines) if engines else []:
        NodeLock(name).acquire().release()
    plan = []
    common = {"ENGINE_PROCESSES": "1", "WORKER_PROCESSES": "1"}
    for name in children.engine_names(settings.ENGINE_NODE_NAME, engines) if engines else []:
        plan.append(
            children.Child(f"engine {name}", ["imap-client"], {**common, "ENGINE_NODE_NAME": name})
        )
    for i in range(1, workers + 1):
        label = f"worker {i}" if workers > 1 else "worker"
        plan.append(children.Child(label, ["worker"], dict(common)))
    if settings.METRICS_PORT:
        for k, child in enumerate(plan):
            child.env["METRICS_PORT"] = str(settings.METRICS_PORT + metrics_after + k)
    return plan


def database_label() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"SQLite {db['NAME']}"
    return f"PostgreSQL {db.get('HOST') or 'local'}/{db.get('NAME')}"
