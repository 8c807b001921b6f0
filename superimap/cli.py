"""The `superimap` command. Thin: each subcommand calls into the apps.

This module parses the command line and sets Django up; the subcommands that need Django
are in superimap/commands.py, imported by _command() once Django is set up, after
superimap.platform.prepare made the files: secrets, VAR_DIR, the database (the models
cannot be imported before, and `genkey` or `chaos-server` need no Django at all).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet
from django.core.management import execute_from_command_line

from superimap import __version__, preflight
from superimap.helpformat import DefaultsHelpFormatter
from superimap.platform import prepare
from superimap.platform.children import ChildFailed
from superimap.platform.config import ConfigError, StartupError


def _stop(exc: StartupError) -> SystemExit:
    """One line naming the cause and the fix, exit status 2."""
    kind = "configuration error: " if isinstance(exc, ConfigError) else ""
    print(f"superimap: {kind}{exc}", file=sys.stderr, flush=True)
    return SystemExit(2)


def _setup_django() -> None:
    """The files first (secrets, VAR_DIR, the SQLite file 0600: platform/prepare.py), then
    Django."""
    try:
        prepare.setup()
    except StartupError as exc:
        raise _stop(exc) from None


def cmd_genkey(args) -> None:
    print(Fernet.generate_key().decode())


# The development tools are imported only when asked for: they are not part of the
# service (and leave the shipped package).


# The repository this package runs from, when it is an editable install of a checkout.
CHECKOUT = Path(__file__).resolve().parents[1]


def devtool(command: str, module: str):
    """A development tool from devtools/ (not part of the shipped package), taken from the
    checkout this package runs from; without one, a one-line error saying where it is."""
    checkout = CHECKOUT
    if (checkout / "devtools" / "__init__.py").is_file() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("devtools"):
            raise
        raise StartupError(
            f"`superimap {command}` is a development tool: it is in devtools/ of the source "
            "repository, not in the installed package; run it from a checkout (make "
            f".venv/.installed, then .venv/bin/superimap {command} or python -m {module})"
        ) from None


def cmd_chaos_server(args) -> None:
    devtool("chaos-server", "devtools.testing.chaos_server").main(args.rest)


def cmd_webhook_inspector(args) -> None:
    inspector = devtool("webhook-inspector", "devtools.testing.webhook_receiver")
    raise SystemExit(inspector.main(args.rest))


def cmd_manage(args) -> None:
    execute_from_command_line(["superimap manage", *args.rest])


NEEDS_DJANGO = {"chaos-server": False, "genkey": False}
# Commands that use the database try it first (preflight.check_database): one line naming
# DATABASE_URL, within seconds, not a traceback. `check` tries it itself, after the rest.
NO_DATABASE = {"chaos-server", "genkey", "check", "manage", "webhook-inspector"}


LOCAL_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "genkey": cmd_genkey,
    "chaos-server": cmd_chaos_server,
    "webhook-inspector": cmd_webhook_inspector,
    "manage": cmd_manage,
}


def _command(name: str) -> Callable[[argparse.Namespace], None]:
    """The function of subcommand ``name``; for one of superimap/commands.py, Django must be
    set up first."""
    if name in LOCAL_COMMANDS:
        return LOCAL_COMMANDS[name]
    # The one deferred import of the product: commands.py imports the models (and through
    # runtime the engine, the worker and the web application), which needs django.setup().
    from superimap import commands

    return getattr(commands, "cmd_" + name.replace("-", "_"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="superimap", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"superimap {__version__}", help="print it"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=DefaultsHelpFormatter,
        )

    def listen(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--host",
            default=os.environ.get("HOST", "127.0.0.1"),
            help="address the web server listens on ($HOST)",
        )
        p.add_argument(
            "--port",
            type=int,
            default=int(os.environ.get("PORT", "8000") or 8000),
            help="port the web server listens on ($PORT)",
        )

    def engines(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--engines",
            type=_count,
            metavar="N",
            help="engine processes (default: $ENGINE_PROCESSES, else one per core); several "
            "are named ENGINE_NODE_NAME-1 ... -N",
        )

    def workers(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--workers",
            type=_count,
            metavar="N",
            help="webhook worker processes (default: $WORKER_PROCESSES, 1)",
        )

    def child(p: argparse.ArgumentParser) -> None:
        # Set by a supervising `superimap` for its children (platform/children.py).
        p.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)

    p = add(
        "up",
        "web + engines + workers (migrates first): one process, or with several cores the "
        "web and a supervisor of one engine process per core and the worker processes",
    )
    listen(p)
    engines(p)
    workers(p)
    listen(add("web", "the API and dashboard"))
    p = add("imap-client", "the IMAP engine: watch mailboxes (one process per core)")
    engines(p)
    child(p)
    p = add("worker", "deliver webhooks")
    workers(p)
    child(p)
    add("migrate", "create or update the database tables")
    p = add("createadmin", "create or reset a dashboard admin")
    p.add_argument("--username", default="admin", help="the admin's user name")
    p.add_argument("--email", default="admin@localhost", help="the admin's email address")
    p.add_argument(
        "--password",
        help="the new password (default: prompt, or $SUPERIMAP_ADMIN_PASSWORD, or print a "
        "generated one when not on a terminal)",
    )
    p = add("createpartner", "create a partner and print its API key")
    p.add_argument("--name", required=True, help="the partner's name, unique ignoring case")
    p.add_argument("--webhook", help="URL for every webhook kind (change later in the dashboard)")
    p.add_argument(
        "--export",
        action="store_true",
        help="print shell `export API_KEY=... WEBHOOK_SECRET=...` lines, for eval",
    )
    p.add_argument(
        "--if-exists",
        choices=["fail", "rotate"],
        default="fail",
        help="when a partner has that name: fail, or rotate: give it a new API key and "
        "webhook secret at once (the old ones stop working; for a local partner such as the "
        "README's, whose key is stored nowhere in plain text)",
    )
    add("rotate-keys", "re-encrypt every secret with the first ENCRYPTION_KEY")
    add("genkey", "print a new ENCRYPTION_KEY")
    p = add(
        "check",
        "validate the configuration, connect to the database, try the web port, and exit",
    )
    listen(p)
    p.add_argument(
        "--skip-port",
        action="store_true",
        help="do not try the web port (e.g. while SuperIMAP runs on it)",
    )
    for name, text in [
        ("chaos-server", "the stress-test IMAP server (see its --help)"),
        ("webhook-inspector", "a local webhook receiver that checks signatures (see its --help)"),
        ("manage", "Django management commands (see its --help)"),
    ]:
        p = add(name, text)
        p.add_argument("rest", nargs=argparse.REMAINDER, help="its own options")
    return parser


PASSTHROUGH = {"chaos-server", "webhook-inspector", "manage"}


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be 1 to 64, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:
        # These take their own options; argparse's REMAINDER mishandles leading "--x".
        args = argparse.Namespace(command=argv[0], rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        if NEEDS_DJANGO.get(args.command, True):
            _setup_django()
        if args.command not in NO_DATABASE:
            preflight.check_database()
        _command(args.command)(args)
    except StartupError as exc:
        raise _stop(exc) from None
    except ChildFailed as exc:
        if exc.status != 2:  # status 2: the child said why in one line already
            print(f"superimap: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.status) from None


if __name__ == "__main__":
    main()
