"""Reading configuration from the environment.

Every problem raises ConfigError naming the variable, so the process stops at start
with one clear line (see cli.main).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet


class StartupError(Exception):
    """The process cannot start: the message is one line that names the cause and the fix
    (cli.main prints it and exits with status 2)."""


class ConfigError(StartupError):
    """Bad configuration: the message starts with the variable's name."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_int(name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        raise ConfigError(name, f"must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise ConfigError(name, f"must be at least {minimum}{upper}, got {value}")
    return value


def env_int_list(name: str, default: list[int], minimum: int = 0, maximum: int | None = None):
    """Comma-separated integers, at least one, each within [minimum, maximum]."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    values = []
    for item in raw.split(","):
        try:
            value = int(item.strip().replace("_", ""))
        except ValueError:
            raise ConfigError(
                name, f"must be comma-separated integers (seconds), got {raw!r}"
            ) from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = "" if maximum is None else f" and at most {maximum}"
            raise ConfigError(name, f"every value must be at least {minimum}{upper}, got {value}")
        values.append(value)
    if len(values) > 50:
        raise ConfigError(name, f"at most 50 values, got {len(values)}")
    return values


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"must be true or false, got {raw!r}")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def _host_entries(name: str) -> list[tuple[str, str, str]]:
    """The comma-separated ``host=value`` entries of ``name`` as (entry, host lower-cased,
    value); none when unset or empty. The callers check the values and say what is wrong."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return []
    entries = []
    for item in (item.strip() for item in raw.split(",")):
        if item:
            host, _, value = item.rpartition("=")
            entries.append((item, host.strip().lower(), value.strip()))
    return entries


def env_login_limits(name: str) -> dict[str, tuple[int, float]]:
    """Comma-separated ``host=burst/rate`` entries (``imap.gmail.com=500/50``): per host,
    ``burst`` logins at once, then ``rate`` a second. ``host`` is lower-cased; the words
    ``loopback`` and ``private`` stand for every loopback or private address."""
    limits: dict[str, tuple[int, float]] = {}
    for item, host, value in _host_entries(name):
        burst, _, rate = value.partition("/")
        try:
            parsed = (int(burst.strip().replace("_", "")), float(rate.strip().replace("_", "")))
        except ValueError:
            parsed = (0, 0.0)
        if not host or parsed[0] < 1 or not 0 < parsed[1] < float("inf"):
            raise ConfigError(
                name,
                f"every entry must be host=burst/rate with burst >= 1 and rate > 0 "
                f"(e.g. imap.gmail.com=500/50), got {item!r}",
            )
        limits[host] = parsed
    return limits


def env_idle_periods(name: str, maximum: int) -> dict[str, int]:
    """Comma-separated ``host=seconds`` entries (``imap.gmx.net=600``): how long one IDLE
    lasts on that IMAP host, 1 to ``maximum`` seconds. ``host`` is lower-cased."""
    periods: dict[str, int] = {}
    for item, host, value in _host_entries(name):
        try:
            seconds = int(value.replace("_", ""))
        except ValueError:
            seconds = 0
        if not host or not 1 <= seconds <= maximum:
            raise ConfigError(
                name,
                f"every entry must be host=seconds with 1 <= seconds <= {maximum} "
                f"(e.g. imap.gmx.net=600), got {item!r}",
            )
        periods[host] = seconds
    return periods


def validate_fernet_keys(name: str, raw: str) -> list[str]:
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    if not keys:
        raise ConfigError(name, "is empty; give one or more comma-separated Fernet keys")
    for index, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ConfigError(
                name,
                f"key #{index} is not a valid Fernet key (32 url-safe base64-encoded bytes); "
                "make one with: superimap genkey",
            ) from None
    return keys


# The repository (or installed tree) holding the superimap package: var/ lives beside it.
BASE_DIR = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ("development", "production", "test")


def superimap_env() -> str:
    """SUPERIMAP_ENV: development (default), production or test."""
    value = env_str("SUPERIMAP_ENV", "development").lower()
    if value not in ENVIRONMENTS:
        raise ConfigError(
            "SUPERIMAP_ENV", f"must be development, production or test, got {value!r}"
        )
    return value


def var_dir(environment: str) -> Path:
    """VAR_DIR, absolute: the database, the static files and the development secrets;
    by default var/ of the checkout (var/test/ under tests)."""
    default = BASE_DIR / "var" / ("test" if environment == "test" else "")
    return Path(env_str("VAR_DIR", str(default))).resolve()


DEV_SECRETS = ("ENCRYPTION_KEY", "SECRET_KEY_BASE")


def dev_secrets_path(folder: Path) -> Path:
    return folder / "secrets.json"


def read_dev_secrets(folder: Path) -> dict[str, str]:
    """The development secrets kept in VAR_DIR/secrets.json; {} when there is none yet.
    Reads only: superimap.platform.prepare writes the file, at process start."""
    path = dev_secrets_path(folder)
    if not path.exists():
        return {}
    return dict(json.loads(path.read_text()))


def write_dev_secrets(folder: Path) -> dict[str, str]:
    """Secrets for dev mode: generated once and kept in VAR_DIR/secrets.json (mode 0600);
    the keys already there are kept."""
    path = dev_secrets_path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = read_dev_secrets(folder)
    changed = False
    if "ENCRYPTION_KEY" not in data:
        data["ENCRYPTION_KEY"] = Fernet.generate_key().decode()
        changed = True
    if "SECRET_KEY_BASE" not in data:
        data["SECRET_KEY_BASE"] = secrets.token_urlsafe(64)
        changed = True
    if changed:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    return data
