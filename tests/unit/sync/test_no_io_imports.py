"""The mailbox machine is sans-IO: no module under superimap/sync imports I/O machinery
or Django (engine/session.py is the driver that does the I/O)."""

from __future__ import annotations

import ast
from pathlib import Path

import superimap.sync

FORBIDDEN = {"asyncio", "socket", "ssl", "django", "selectors", "uvloop", "trio", "threading"}
PACKAGE = Path(superimap.sync.__file__).parent


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_it_finds_the_modules() -> None:
    assert {"mailbox.py", "batch.py"} <= {p.name for p in PACKAGE.glob("*.py")}


def test_it_imports_no_io_modules() -> None:
    offenders = {
        path.name: sorted(imported_roots(path) & FORBIDDEN)
        for path in PACKAGE.rglob("*.py")
        if imported_roots(path) & FORBIDDEN
    }
    assert offenders == {}
