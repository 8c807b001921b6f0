"""The IMAP layer is sans-IO: no module under superimap/imap (the client side) or
devtools/imap (the test server's side) may import I/O machinery."""

from __future__ import annotations

import ast
from pathlib import Path

import devtools.imap
import superimap.imap

FORBIDDEN = {"asyncio", "socket", "ssl", "django", "selectors", "uvloop", "trio"}
PACKAGE = Path(superimap.imap.__file__).parent
SERVER_SIDE = Path(devtools.imap.__file__).parent


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_it_finds_the_modules() -> None:
    assert {"framing.py", "protocol.py"} <= {p.name for p in PACKAGE.glob("*.py")}
    assert {"server.py", "mailstore.py"} <= {p.name for p in SERVER_SIDE.glob("*.py")}


def test_it_imports_no_io_modules() -> None:
    offenders = {
        path.name: sorted(imported_roots(path) & FORBIDDEN)
        for path in [*PACKAGE.rglob("*.py"), *SERVER_SIDE.rglob("*.py")]
        if imported_roots(path) & FORBIDDEN
    }
    assert offenders == {}
