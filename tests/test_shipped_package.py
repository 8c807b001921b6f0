"""The shipped package holds product code only: the test servers, fixtures and benchmarks
live in devtools/ (a sibling of superimap/ in the repository), which the wheel leaves out and
no product module imports (issue 19)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_namespace_packages, find_packages

ROOT = Path(__file__).resolve().parents[1]
DEV_ONLY = ("devtools", "tests", "scripts", "docs")
MODULES = {"chaos-server": "chaos_server", "webhook-inspector": "webhook_receiver"}


def shipped_packages() -> list[str]:
    """What setuptools puts in the wheel, from pyproject's [tool.setuptools.packages.find]."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    find = config["packages"]["find"]
    finder = find_namespace_packages if find.get("namespaces", True) else find_packages
    return finder(
        where=str(ROOT / find.get("where", ["."])[0]),
        include=find.get("include", ["*"]),
        exclude=find.get("exclude", []),
    )


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, also inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_wheel_takes_superimap_and_nothing_of_the_dev_tools():
    packages = shipped_packages()
    assert "superimap" in packages and "superimap.imap" in packages
    assert [p for p in packages if p.split(".")[0] != "superimap"] == []
    moved = {"devtools.testing", "devtools.bench", "devtools"}
    assert moved.isdisjoint(packages), packages


def test_the_imap_test_server_and_mail_store_are_not_in_the_product():
    assert not (ROOT / "superimap" / "imap" / "server.py").exists()
    assert not (ROOT / "superimap" / "imap" / "mailstore.py").exists()
    assert (ROOT / "devtools" / "imap" / "server.py").is_file()
    assert (ROOT / "devtools" / "imap" / "mailstore.py").is_file()


def test_no_product_module_imports_the_dev_tools_or_the_tests():
    offenders, seen = {}, set()
    for path in sorted((ROOT / "superimap").rglob("*.py")):
        modules = imported_modules(path)
        seen |= modules
        bad = sorted(m for m in modules if m.split(".")[0] in DEV_ONLY)
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}
    assert {"django.db", "superimap.imap"} <= seen  # the check does see the imports


def test_the_cli_says_where_the_dev_commands_are_when_it_runs_without_a_checkout(tmp_path):
    """`superimap chaos-server` from an installed package (no devtools/ next to it): one line
    naming the fix, exit status 2, no traceback."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from superimap import cli\n"
        f"cli.CHECKOUT = Path({str(tmp_path)!r})\n"
        "cli.main(sys.argv[1:])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for command in ("chaos-server", "webhook-inspector"):
        result = subprocess.run(
            [sys.executable, "-c", script, command, "--help"],
            cwd=tmp_path,  # not the checkout: devtools is not importable from here
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result
        assert result.stderr == (
            f"superimap: `superimap {command}` is a development tool: it is in devtools/ of "
            "the source repository, not in the installed package; run it from a checkout "
            f"(make .venv/.installed, then .venv/bin/superimap {command} or python -m "
            f"devtools.testing.{MODULES[command]})\n"
        )
