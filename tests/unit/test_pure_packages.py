"""The sans-IO layers import no I/O machinery and no Django: the IMAP protocol (client side,
superimap/imap, and the test server's side, devtools/imap), the mailbox machine
(superimap/sync) and the delivery policy. import-linter's "pure" contract checks the
product's modules too; this also covers devtools/imap and names each offending import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import devtools.imap
import superimap.delivery.policy
import superimap.imap
import superimap.sync

FORBIDDEN = {"asyncio", "socket", "ssl", "django", "selectors", "uvloop", "trio", "threading"}

PURE = {
    "imap": (Path(superimap.imap.__file__).parent, {"framing.py", "protocol.py"}),
    "imap server side": (Path(devtools.imap.__file__).parent, {"server.py", "mailstore.py"}),
    "sync": (Path(superimap.sync.__file__).parent, {"mailbox.py", "batch.py", "persist.py"}),
    "policy": (Path(superimap.delivery.policy.__file__), {"policy.py"}),
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def modules(where: Path) -> list[Path]:
    return [where] if where.is_file() else sorted(where.rglob("*.py"))


@pytest.mark.parametrize("name", sorted(PURE))
def test_it_finds_the_modules(name: str) -> None:
    where, expected = PURE[name]
    assert expected <= {path.name for path in modules(where)}


@pytest.mark.parametrize("name", sorted(PURE))
def test_it_imports_no_io_modules(name: str) -> None:
    where, _ = PURE[name]
    offenders = {
        path.name: sorted(imported_roots(path) & FORBIDDEN)
        for path in modules(where)
        if imported_roots(path) & FORBIDDEN
    }
    assert offenders == {}


def test_it_names_an_offender(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("import asyncio\nfrom django.db import connection\nimport json\n")
    assert imported_roots(module) & FORBIDDEN == {"asyncio", "django"}
