"""The `superimap` subcommands that need Django set up: cli.main imports this module after
django.setup() (the models cannot be imported before). Thin: each calls into the apps."""

from __future__ import annotations

import getpass
import os
import secrets
import shlex
import sys

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import transaction

from superimap import __version__, preflight, runtime
from superimap.accounts import partners
from superimap.partners.models import Partner
from superimap.platform import children
from superimap.platform.keys import reencrypt_all


def _migrate(verbosity: int = 0) -> None:
    call_command("migrate", interactive=False, verbosity=verbosity)


def ensure_default_admin(out=sys.stdout) -> str | None:
    """On first start, create `admin` with a random password and print it once (to `out`;
    None to leave printing it to the caller)."""
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


def _serve_with_banner(args, sock, password: str | None, services: str, **which) -> None:
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
    return preflight.bind_web(args.host, args.port)


def _counts(args) -> tuple[int, int]:
    """Engine and worker processes asked for (--engines, --workers, else the settings)."""
    engines = getattr(args, "engines", None)
    workers = getattr(args, "workers", None)
    return (
        children.engine_processes(settings.ENGINE_PROCESSES if engines is None else engines),
        settings.WORKER_PROCESSES if workers is None else workers,
    )


def _plural(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 'es'}"


def cmd_up(args) -> None:
    sock = _bind(args)
    _migrate()
    password = ensure_default_admin(out=None)
    engines, workers = _counts(args)
    if engines == 1 and workers == 1:
        # One process, one event loop (a one-core box, or ENGINE_PROCESSES=1).
        _serve_with_banner(
            args, sock, password, "web + engine + worker", web=True, engine=True, worker=True
        )
        return
    plan = runtime.child_plan(engines, workers, metrics_after=1)
    services = f"web + {_plural(engines, 'engine process')} + {_plural(workers, 'worker process')}"
    _serve_with_banner(
        args,
        sock,
        password,
        services,
        web=True,
        engine=False,
        worker=False,
        supervisor=children.Supervisor(plan),
    )


def cmd_web(args) -> None:
    sock = _bind(args)
    password = ensure_default_admin(out=None)
    _serve_with_banner(args, sock, password, "web", web=True, engine=False, worker=False)


def cmd_imap_client(args) -> None:
    engines, _ = _counts(args)
    if engines == 1 or args.parent_fd is not None:
        runtime.run(web=False, engine=True, worker=False, host="", port=0, parent_fd=args.parent_fd)
        return
    plan = runtime.child_plan(engines, 0, metrics_after=0)
    supervisor = children.Supervisor(plan)
    runtime.run(web=False, engine=False, worker=False, host="", port=0, supervisor=supervisor)


def cmd_worker(args) -> None:
    _, workers = _counts(args)
    if workers == 1 or args.parent_fd is not None:
        runtime.run(web=False, engine=False, worker=True, host="", port=0, parent_fd=args.parent_fd)
        return
    supervisor = children.Supervisor(runtime.child_plan(0, workers, metrics_after=0))
    runtime.run(web=False, engine=False, worker=False, host="", port=0, supervisor=supervisor)


def cmd_migrate(args) -> None:
    _migrate(verbosity=1)


def cmd_createadmin(args) -> None:
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
    with transaction.atomic():
        partner = Partner.objects.select_for_update().filter(name__iexact=args.name.strip())
        partner = partner.first()
        if partner is None:
            return False
        if args.webhook:
            partners.set_all_webhooks(partner, args.webhook)
            _validate_webhook(partner, args.webhook)
        partners.replace_credentials(partner)
    what = f"partner {partner.name!r} (id {partner.id}) exists: new API key and webhook secret"
    _print_credentials(args, partner, f"{what}; the previous ones no longer work")
    return True


def _validate_webhook(partner, webhook: str) -> None:
    try:
        # The dashboard's rules (a URL whose host is a host name, at most 1,000 characters,
        # a name no other partner has, ignoring case), and webhooks are POSTed over HTTP:
        # http(s) only.
        partners.validate_partner(partner, exclude=["api_key", "api_key_hash", "webhook_secret"])
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
    if args.if_exists == "rotate" and _rotate_existing_partner(args):
        return
    partner = Partner(name=args.name.strip())
    partners.set_all_webhooks(partner, args.webhook or "")
    _validate_webhook(partner, args.webhook or "")
    partners.save_partner(partner)
    _print_credentials(args, partner, f"created partner {partner.name!r} (id {partner.id})")


def cmd_rotate_keys(args) -> None:
    total = reencrypt_all(progress=sys.stdout)
    print(f"Re-encrypted {total} rows with the first ENCRYPTION_KEY.")


def cmd_check(args) -> None:
    call_command("check")
    database = preflight.check_database()
    print(f"configuration OK; database reachable ({database})")
    if args.skip_port:
        return
    preflight.port_free(args.host, args.port)
    print(f"port {args.host}:{args.port} is free")
