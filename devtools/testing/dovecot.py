"""A private Dovecot 2.3 IMAP server in a temporary directory, for integration tests.

Everything (config, sockets, state, log, maildirs, TLS certificate) lives under one temp
dir; the server listens on 127.0.0.1 on free ports and never touches the system Dovecot.

    with DovecotServer() as server:
        server.add_user("alice", "secret")
        server.deliver("alice", make_message("hi", "a@example.com", "alice@example.com", "x"))
"""

from __future__ import annotations

import datetime
import grp
import imaplib
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devtools.testing import free_port

START_TIMEOUT = 15.0
MAIL_USER_WHEN_ROOT = "nobody"
_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/sbin")


class DovecotError(RuntimeError):
    pass


def find_binary(name: str) -> str:
    """Locate a Dovecot binary even when the sbin directories are not on PATH."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SEARCH_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise DovecotError(
        f"{name!r} not found: install Dovecot (Debian: apt-get install dovecot-imapd "
        "dovecot-lmtpd) to run the Dovecot integration tests"
    )


# --- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateFiles:
    ca_cert: Path
    """The CA certificate clients trust (``ssl.create_default_context(cafile=...)``)."""
    server_cert: Path
    """The server certificate followed by the CA certificate (PEM chain)."""
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SuperIMAP tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def write_test_certificates(
    directory: Path, hostnames: tuple[str, ...] = ("localhost",)
) -> CertificateFiles:
    """Create a throw-away CA and a server certificate for 127.0.0.1 and ``hostnames``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid_from, valid_to = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("SuperIMAP test CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    alt_names += [x509.DNSName(name) for name in hostnames]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    files = CertificateFiles(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    files.server_cert.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    files.server_key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    files.server_key.chmod(0o600)
    return files


# --- Dovecot ---------------------------------------------------------------------------------

_CONFIG = """\
# Generated by devtools.testing.dovecot for Dovecot 2.3.
instance_name = {instance}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
shutdown_clients = yes

default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = {mail_uid}
first_valid_gid = {mail_gid}
mail_uid = {mail_uid}
mail_gid = {mail_gid}
mail_location = maildir:~/Maildir
mailbox_idle_check_interval = 1 secs
imap_idle_notify_interval = 30 secs

ssl = yes
ssl_cert = <{server_cert}
ssl_key = <{server_key}
disable_plaintext_auth = no
# Tests use wrong passwords on purpose: answer at once, no growing per-IP penalty.
auth_failure_delay = 0
auth_mechanisms = plain login

# One file per user: Dovecot opens a new user's file on first lookup, whereas a shared file
# is re-read at most once a second and only when its mtime or size changed.
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users/%u
}}
userdb {{
  driver = passwd-file
  args = {root}/users/%u
  default_fields = home={root}/home/%u
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
  }}
}}
"""


# A Gmail-like layout (issue 8 item 1): every message lives in "[Gmail]/All Mail", flagged
# \All by RFC 6154 SPECIAL-USE; INBOX holds only some of them. Pass as extra_config.
GMAIL_LIKE_NAMESPACE = """\
namespace inbox {
  inbox = yes
  separator = /
  mailbox "[Gmail]/All Mail" {
    auto = create
    special_use = \\All
  }
  mailbox "[Gmail]/Sent Mail" {
    auto = create
    special_use = \\Sent
  }
  mailbox "[Gmail]/Spam" {
    auto = create
    special_use = \\Junk
  }
}
"""
# Several folders to watch at once (design.md 4.10): INBOX, a plain "Lists" and "Spam"
# flagged \Junk. The mailbox list index is what makes Dovecot 2.3 advertise NOTIFY.
MORE_FOLDERS_NAMESPACE = """\
mailbox_list_index = yes
namespace inbox {
  inbox = yes
  separator = /
  mailbox Lists {
    auto = create
  }
  mailbox Spam {
    auto = create
    special_use = \\Junk
  }
}
"""
# The same folders without their special-use flags: only the name fallback can find them.
GMAIL_NAMES_WITHOUT_SPECIAL_USE = """\
namespace inbox {
  inbox = yes
  separator = /
  mailbox "[Gmail]/All Mail" {
    auto = create
  }
}
"""


def _parse_tab(output: str) -> list[dict[str, str]]:
    """Parse ``doveadm -f tab`` output: a header line, then one tab-separated row per item."""
    lines = output.splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


class DovecotServer:
    """A private Dovecot on 127.0.0.1 (plain+STARTTLS on ``imap_port``, TLS on ``imaps_port``)."""

    host = "127.0.0.1"

    def __init__(self, extra_config: str = "") -> None:
        self.extra_config = extra_config
        self._dovecot_bin = find_binary("dovecot")
        self._doveadm_bin = find_binary("doveadm")
        self.root: Path | None = None
        self.imap_port = 0
        self.imaps_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._passwords: dict[str, str] = {}

    # -- lifecycle --

    def __enter__(self) -> DovecotServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def config_path(self) -> Path:
        return self._root / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self._root / "dovecot.log"

    @property
    def cert_path(self) -> Path:
        """The CA certificate that signed the server certificate; trust it in clients."""
        return self._root / "tls" / "ca.pem"

    @property
    def _root(self) -> Path:
        if self.root is None:
            raise DovecotError("DovecotServer is not started")
        return self.root

    def start(self) -> None:
        if self._process is not None:
            raise DovecotError("DovecotServer already started")
        self.root = Path(tempfile.mkdtemp(prefix="superimap-dovecot-"))
        # Dovecot's unprivileged processes (auth, stats) must be able to reach the files here.
        self.root.chmod(0o755)
        try:
            self._passwords.clear()
            self._write_config()
            with open(self.root / "dovecot.stderr", "wb") as stderr:
                self._process = subprocess.Popen(
                    [self._dovecot_bin, "-F", "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    start_new_session=True,
                )
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the master and all its children
                process.wait()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _write_config(self) -> None:
        root = self._root
        certificates = write_test_certificates(root / "tls")
        if os.geteuid() == 0:
            # Dovecot refuses mail access as root, so mail belongs to an unprivileged user.
            mail_user = pwd.getpwnam(MAIL_USER_WHEN_ROOT)
            uid, gid = mail_user.pw_uid, mail_user.pw_gid
            internal_user, internal_group, login_user = "dovecot", "dovecot", "dovenull"
        else:  # an unprivileged Dovecot runs every process as the current user
            uid, gid = os.geteuid(), os.getegid()
            internal_user = login_user = pwd.getpwuid(uid).pw_name
            internal_group = grp.getgrgid(gid).gr_name
        (root / "home").mkdir()
        os.chown(root / "home", uid, gid)
        self.imap_port, self.imaps_port = free_port(), free_port()
        self.config_path.write_text(
            _CONFIG.format(
                instance=f"superimap-test-{root.name}",
                root=root,
                internal_user=internal_user,
                internal_group=internal_group,
                login_user=login_user,
                mail_uid=uid,
                mail_gid=gid,
                server_cert=certificates.server_cert,
                server_key=certificates.server_key,
                imap_port=self.imap_port,
                imaps_port=self.imaps_port,
            )
            + self.extra_config
        )

    def _wait_until_listening(self) -> None:
        """Return once both ports accept connections and the plain one greets with auth ready."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise DovecotError(
                    f"dovecot exited with status {self._process.returncode}:\n{self._logs()}"
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise DovecotError(f"dovecot not ready within {START_TIMEOUT}s:\n{self._logs()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            socket.create_connection((self.host, self.imaps_port), timeout=1).close()
            # imap-login only greets once its auth and stats connections are up.
            with socket.create_connection((self.host, self.imap_port), timeout=5) as sock:
                return sock.makefile("rb").readline().startswith(b"* OK")
        except OSError:
            return False

    def _logs(self) -> str:
        parts = []
        for name in ("dovecot.stderr", "dovecot.log"):
            path = self._root / name
            if path.exists():
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    # -- users and mail --

    def add_user(self, username: str, password: str) -> None:
        """Create a user, or change its password; effective when this returns."""
        if not username or any(ch in username for ch in ":/\r\n") or username.startswith("."):
            raise ValueError(f"unsupported username {username!r}")
        if any(ch in password for ch in ":\r\n"):
            raise ValueError("passwords may not contain ':' or newlines")
        users = self._root / "users"
        users.mkdir(mode=0o755, exist_ok=True)
        existed = username in self._passwords
        self._passwords[username] = password
        tmp = users / f".{username}.tmp"
        tmp.write_text(f"{username}:{{PLAIN}}{password}::::::\n")
        tmp.chmod(0o644)
        tmp.replace(users / username)  # atomic: Dovecot never reads half a file
        if existed:
            self._wait_for_password(username, password)

    def _wait_for_password(self, username: str, password: str) -> None:
        # Dovecot re-checks an open passwd-file at most once per second.
        deadline = time.monotonic() + 5
        while True:
            try:
                self.doveadm("auth", "test", username, password)
                return
            except DovecotError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def doveadm(self, *args: str, stdin: bytes | None = None) -> str:
        """Run ``doveadm`` against this instance and return its stdout."""
        result = subprocess.run(
            [self._doveadm_bin, "-c", str(self.config_path), *args],
            input=stdin,
            capture_output=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result.stdout.decode(errors="replace")

    def deliver(self, username: str, raw: bytes, mailbox: str = "INBOX") -> None:
        """Store ``raw`` in ``mailbox``; IDLE clients on it are told (EXISTS) promptly."""
        self.doveadm("save", "-u", username, "-m", mailbox, stdin=raw)

    def append(
        self,
        username: str,
        raw: bytes,
        internal_date: datetime.datetime,
        mailbox: str = "INBOX",
    ) -> None:
        """Store ``raw`` with this INTERNALDATE (mail that arrived back then), by IMAP APPEND
        as the user (doveadm save dates it now)."""
        client = imaplib.IMAP4(self.host, self.imap_port)
        try:
            client.login(username, self._passwords[username])
            status, data = client.append(mailbox, "", imaplib.Time2Internaldate(internal_date), raw)
            if status != "OK":
                raise DovecotError(f"APPEND refused: {data!r}")
        finally:
            client.logout()

    def expunge(self, username: str, uid: int, mailbox: str = "INBOX") -> None:
        """Remove one message, as another mail client would."""
        self.doveadm("expunge", "-u", username, "mailbox", mailbox, "uid", str(uid))

    def flags(self, username: str, uid: int, flags: str, mailbox: str = "INBOX", op: str = "add"):
        """``op`` (add, remove, replace) ``flags`` (space-separated) of one message, as
        another mail client would; IDLE clients on it get an unsolicited FETCH."""
        self.doveadm("flags", op, "-u", username, flags, "mailbox", mailbox, "uid", str(uid))

    def move(self, username: str, uid: int, destination: str, mailbox: str = "INBOX") -> None:
        """Move one message to ``destination`` (a new UID there; gone from ``mailbox``)."""
        self.doveadm("move", "-u", username, destination, "mailbox", mailbox, "uid", str(uid))

    def uids(self, username: str, mailbox: str = "INBOX") -> list[int]:
        out = self.doveadm("-f", "tab", "fetch", "-u", username, "uid", "mailbox", mailbox)
        return sorted(int(row["uid"]) for row in _parse_tab(out))

    def create_mailbox(self, username: str, mailbox: str) -> None:
        self.doveadm("mailbox", "create", "-u", username, mailbox)

    def uidvalidity(self, username: str, mailbox: str = "INBOX") -> int:
        return int(self._status(username, mailbox, "uidvalidity"))

    def _status(self, username: str, mailbox: str, field: str) -> str:
        out = self.doveadm("-f", "tab", "mailbox", "status", "-u", username, field, mailbox)
        rows = _parse_tab(out)
        if len(rows) != 1 or field not in rows[0]:
            raise DovecotError(f"unexpected doveadm mailbox status output: {out!r}")
        return rows[0][field]

    def message_flags(self, username: str, mailbox: str = "INBOX") -> list[set[str]]:
        """The flags of each message in ``mailbox``, in UID order.

        ``\\Recent`` is left out: it is per session and depends on who looked first.
        """
        out = self.doveadm("-f", "tab", "fetch", "-u", username, "uid flags", "mailbox", mailbox)
        rows = sorted(_parse_tab(out), key=lambda row: int(row["uid"]))
        return [set(row["flags"].split()) - {"\\Recent"} for row in rows]

    def recreate_mailbox(
        self, username: str, mailbox: str = "INBOX", *, disconnect: bool = True
    ) -> int:
        """Give ``mailbox`` a new UIDVALIDITY, keeping its messages; return the new value.

        Dovecot itself only notices on a session's next command (``* BYE IMAP session state
        is inconsistent``), so an IDLE client would not learn of it; with ``disconnect`` the
        user's sessions are kicked (``* BYE Server shutting down.``) and must reconnect.
        """
        new = self.uidvalidity(username, mailbox) + 1
        self.doveadm("mailbox", "update", "-u", username, "--uid-validity", str(new), mailbox)
        if disconnect:
            self.kick(username)
        return self.uidvalidity(username, mailbox)

    def kick(self, username: str) -> None:
        """Disconnect every IMAP session of ``username``."""
        self.doveadm("kick", username)
