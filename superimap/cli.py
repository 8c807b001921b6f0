"""The `superimap` command. Thin: each subcommand calls into the apps."""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import shlex
import sys
from pathlib import Path

from superimap.config import ConfigError, StartupError
from superimap.helpformat import DefaultsHelpFormatter


def _stop(exc: StartupError) -> SystemExit:
    """One line naming the cause and the fix, exit status 2."""
    kind = "configuration error: " if isinstance(exc, ConfigError) else ""
    print(f"superimap: {kind}{exc}", file=sys.stderr, flush=True)
    return SystemExit(2)


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "superimap.settings")
    try:
        import django

        django.setup()
    except StartupError as exc:
        raise _stop(exc) from None


def _migrate(verbosity: int = 0) -> None:
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=verbosity)


def ensure_default_admin(out=sys.stdout) -> str | None:
    """On first start, create `admin` with a random password and print it once (to `out`;
    None to leave printing it to the caller)."""
    from django.contrib.auth import get_user_model

    User = get_user_model()
    if User.objects.filter(is_superuser=True).exists():
        return None
    password = secrets.token_urlsafe(15)
    User.objects.create_superuser("admin", "admin@localhost", password)
    if out is not None:
        out.write(
            "\n"
            "  SuperIMAP: created the dashboard admin (shown only this once)\n"
            "    username: admin\n"
            f"    password: {password}\n"
            "  Change it after logging in (or: superimap createadmin --username NAME).\n\n"
        )
        out.flush()
    return password


def startup_banner(host: str, port: int, password: str | None, services: str) -> str:
    """The last lines of start-up: where to go, how to log in, how to stop."""
    from superimap import __version__, runtime

    url = f"http://{host}:{port}"
    if password:
        login = f"admin / {password}   (new admin: shown this once, change it after login)"
    else:
        login = "admin (password from the first start; reset: superimap createadmin)"
    rule = "  " + "-" * 72
    return "\n".join(
        [
            "",
            rule,
            f"  SuperIMAP {__version__} is running: {services}",
            f"    Dashboard   {url}/admin/",
            f"    Login       {login}",
            f"    API         {url}/api/v1/   (docs {url}/api/v1/docs)",
            f"    Database    {runtime.database_label()}",
            "    Stop        Ctrl-C",
            rule,
            "",
        ]
    )


def _serve_with_banner(args, sock, password: str | None, services: str, **which: bool) -> None:
    from superimap import preflight, runtime

    shown = []

    def show() -> None:
        print(startup_banner(args.host, args.port, password, services), flush=True)
        shown.append(True)

    preflight.hold_pid_file(args.port)
    try:
        runtime.run(host=args.host, port=args.port, on_listening=show, sock=sock, **which)
    finally:
        if password and not shown:
            # The web server never came up: the one-time password must not be lost.
            print(f"  SuperIMAP: the new dashboard admin is admin / {password}", flush=True)


def _bind(args):
    """Before anything starts (main() has tried the database): the web port is ours."""
    from superimap import preflight

    return preflight.bind_web(args.host, args.port)


def cmd_up(args) -> None:
    sock = _bind(args)
    _migrate()
    password = ensure_default_admin(out=None)
    _serve_with_banner(
        args, sock, password, "web + engine + worker", web=True, engine=True, worker=True
    )


def cmd_web(args) -> None:
    sock = _bind(args)
    password = ensure_default_admin(out=None)
    _serve_with_banner(args, sock, password, "web", web=True, engine=False, worker=False)


def cmd_imap_client(args) -> None:
    from superimap import runtime

    runtime.run(web=False, engine=True, worker=False, host="", port=0)


def cmd_worker(args) -> None:
    from superimap import runtime

    runtime.run(web=False, engine=False, worker=True, host="", port=0)


def cmd_migrate(args) -> None:
    _migrate(verbosity=1)


def cmd_createadmin(args) -> None:
    import getpass

    from django.contrib.auth import get_user_model

    User = get_user_model()
    password = args.password or os.environ.get("SUPERIMAP_ADMIN_PASSWORD")
    generated = False
    if not password:
        if sys.stdin.isatty():
            password = getpass.getpass(f"Password for {args.username}: ")
        else:
            password, generated = secrets.token_urlsafe(15), True
    user, created = User.objects.get_or_create(
        username=args.username, defaults={"email": args.email}
    )
    user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save()
    print(f"{'Created' if created else 'Updated'} admin {args.username!r}.")
    if generated:
        print(f"password: {password}")


def _option(field: str) -> str:
    """The createpartner option a model field's error is about."""
    if "webhook" in field:
        return "--webhook"
    return "--name" if field in {"name", "__all__"} else f"--{field}"


def _rotate_existing_partner(args) -> bool:
    """--if-exists rotate: give the partner of that name (ignoring case) a new API key and
    webhook secret at once, no grace period (the old ones stop working now), and point its
    webhooks at --webhook if given. For a local partner like the README's "My app": its key
    is never stored in plain text anywhere, so getting new ones is how to get them again.
    Returns False if there is no such partner."""
    from django.db import transaction
    from django.utils import timezone

    from superimap.partners.models import Partner, new_api_key, new_webhook_secret

    with transaction.atomic():
        partner = Partner.objects.select_for_update().filter(name__iexact=args.name.strip())
        partner = partner.first()
        if partner is None:
            return False
        if args.webhook:
            _validate_webhook(partner, args.webhook)
            for field in partner.webhook_fields():
                setattr(partner, field, args.webhook)
        partner.api_key = new_api_key()
        partner.webhook_secret = new_webhook_secret()
        partner.previous_api_key_hash = ""
        partner.previous_api_key_until = timezone.now()
        partner.previous_webhook_secret = ""
        partner.previous_webhook_secret_until = timezone.now()
        partner.save()
    what = f"partner {partner.name!r} (id {partner.id}) exists: new API key and webhook secret"
    _print_credentials(args, partner, f"{what}; the previous ones no longer work")
    return True


def _validate_webhook(partner, webhook: str) -> None:
    from django.core.exceptions import ValidationError

    try:
        # The dashboard's rules (a URL whose host is a host name, at most 1,000 characters,
        # a name no other partner has, ignoring case), and webhooks are POSTed over HTTP:
        # http(s) only.
        partner.full_clean(exclude=["api_key", "api_key_hash", "webhook_secret"])
        if webhook and not webhook.lower().startswith(("http://", "https://")):
            raise ValidationError({"webhook": ["Enter an http:// or https:// URL."]})
    except ValidationError as exc:
        # One line; the five webhook fields share --webhook: say each problem once.
        by_option: dict[str, dict[str, None]] = {}
        for field, errors in sorted(exc.message_dict.items()):
            by_option.setdefault(_option(field), {}).update(dict.fromkeys(errors))
        problems = "; ".join(f"{option}: {' '.join(e)}" for option, e in by_option.items())
        if partner.pk is None and partner.name_taken():
            problems += " (--if-exists rotate gives that partner a new API key and secret)"
        print(f"superimap: {problems}", file=sys.stderr)
        raise SystemExit(2) from None


def _print_credentials(args, partner, what: str) -> None:
    if args.export:
        # For `eval "$(superimap createpartner ... --export)"`: the next commands need both.
        print(f"# {what[0].upper()}{what[1:]}.")
        print(f"export API_KEY={shlex.quote(partner.api_key)}")
        print(f"export WEBHOOK_SECRET={shlex.quote(partner.webhook_secret)}")
        return
    print(f"{what[0].upper()}{what[1:]}.")
    print(f"API key: {partner.api_key}")
    print(f"Standard Webhooks secret: {partner.webhook_secret}")


def cmd_createpartner(args) -> None:
    from superimap.partners.models import Partner

    if args.if_exists == "rotate" and _rotate_existing_partner(args):
        return
    partner = Partner(
        name=args.name.strip(),
        new_mail_webhook=args.webhook or "",
        user_connected_webhook=args.webhook or "",
        user_disconnected_webhook=args.webhook or "",
        user_error_webhook=args.webhook or "",
        user_recovered_webhook=args.webhook or "",
    )
    _validate_webhook(partner, args.webhook or "")
    partner.save()
    _print_credentials(args, partner, f"created partner {partner.name!r} (id {partner.id})")


def cmd_rotate_keys(args) -> None:
    from superimap.keys import reencrypt_all

    total = reencrypt_all(progress=sys.stdout)
    print(f"Re-encrypted {total} rows with the first ENCRYPTION_KEY.")


def cmd_genkey(args) -> None:
    from cryptography.fernet import Fernet

    print(Fernet.generate_key().decode())


def cmd_check(args) -> None:
    from django.core.management import call_command

    from superimap import preflight

    call_command("check")
    database = preflight.check_database()
    print(f"configuration OK; database reachable ({database})")
    if args.skip_port:
        return
    preflight.port_free(args.host, args.port)
    print(f"port {args.host}:{args.port} is free")


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
    from django.core.management import execute_from_command_line

    execute_from_command_line(["superimap manage", *args.rest])


NEEDS_DJANGO = {"chaos-server": False, "genkey": False}
# Commands that use the database try it first (preflight.check_database): one line naming
# DATABASE_URL, within seconds, not a traceback. `check` tries it itself, after the rest.
NO_DATABASE = {"chaos-server", "genkey", "check", "manage", "webhook-inspector"}


def build_parser() -> argparse.ArgumentParser:
    from superimap import __version__

    parser = argparse.ArgumentParser(prog="superimap", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"superimap {__version__}", help="print it"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=DefaultsHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

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

    for name, func, text in [
        ("up", cmd_up, "web + engine + worker in one process (migrates first)"),
        ("web", cmd_web, "the API and dashboard"),
    ]:
        listen(add(name, func, text))
    add("imap-client", cmd_imap_client, "the IMAP engine: watch mailboxes")
    add("worker", cmd_worker, "deliver webhooks")
    add("migrate", cmd_migrate, "create or update the database tables")
    p = add("createadmin", cmd_createadmin, "create or reset a dashboard admin")
    p.add_argument("--username", default="admin", help="the admin's user name")
    p.add_argument("--email", default="admin@localhost", help="the admin's email address")
    p.add_argument(
        "--password",
        help="the new password (default: prompt, or $SUPERIMAP_ADMIN_PASSWORD, or print a "
        "generated one when not on a terminal)",
    )
    p = add("createpartner", cmd_createpartner, "create a partner and print its API key")
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
    add("rotate-keys", cmd_rotate_keys, "re-encrypt every secret with the first ENCRYPTION_KEY")
    add("genkey", cmd_genkey, "print a new ENCRYPTION_KEY")
    p = add(
        "check",
        cmd_check,
        "validate the configuration, connect to the database, try the web port, and exit",
    )
    listen(p)
    p.add_argument(
        "--skip-port",
        action="store_true",
        help="do not try the web port (e.g. while SuperIMAP runs on it)",
    )
    for name, func, text in [
        ("chaos-server", cmd_chaos_server, "the stress-test IMAP server (see its --help)"),
        (
            "webhook-inspector",
            cmd_webhook_inspector,
            "a local webhook receiver that checks signatures (see its --help)",
        ),
        ("manage", cmd_manage, "Django management commands (see its --help)"),
    ]:
        p = add(name, func, text)
        p.add_argument("rest", nargs=argparse.REMAINDER, help="its own options")
    return parser


PASSTHROUGH = {"chaos-server", "webhook-inspector", "manage"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:
        # These take their own options; argparse's REMAINDER mishandles leading "--x".
        args = argparse.Namespace(command=argv[0], rest=argv[1:])
        args.func = {
            "chaos-server": cmd_chaos_server,
            "webhook-inspector": cmd_webhook_inspector,
            "manage": cmd_manage,
        }[argv[0]]
    else:
        args = build_parser().parse_args(argv)
    try:
        if NEEDS_DJANGO.get(args.command, True):
            _setup_django()
        if args.command not in NO_DATABASE:
            from superimap import preflight

            preflight.check_database()
        args.func(args)
    except StartupError as exc:
        raise _stop(exc) from None


if __name__ == "__main__":
    main()
