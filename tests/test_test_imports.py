"""Tests share code only through tests/helpers/: no module under tests/ imports a test
module or a conftest.py (pytest loads those itself; importing them runs a module twice under
two names and couples tests). Fixtures stay in conftest.py files (issue 19)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def tree_imports(path: Path) -> list[str]:
    """The modules of the test tree (tests.*, or relative) that a file imports, also inside
    functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "tests"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append("." * node.level + (node.module or ""))
            elif node.module and node.module.split(".")[0] == "tests":
                found += [
                    node.module if node.module != "tests" else f"tests.{a.name}" for a in node.names
                ]
    return found


def allowed(module: str) -> bool:
    return module == "tests.helpers" or module.startswith("tests.helpers.")


def offenders(root: Path) -> dict[str, list[str]]:
    bad = {}
    for path in sorted(root.rglob("*.py")):
        wrong = [m for m in tree_imports(path) if not allowed(m)]
        if wrong:
            bad[str(path.relative_to(root))] = wrong
    return bad


def test_no_test_module_or_conftest_is_imported():
    assert offenders(TESTS) == {}


def test_the_check_finds_each_kind_of_import(tmp_path):
    (tmp_path / "test_a.py").write_text(
        "from tests.helpers.api import ApiClient\n"
        "from tests.conftest import ApiClient\n"
        "import tests.engine.test_leases\n"
        "from tests import test_cli\n"
        "from . import conftest\n"
        "def f():\n"
        "    from tests.engine.conftest import wait_for\n"
    )
    assert offenders(tmp_path) == {
        "test_a.py": [
            "tests.conftest",
            "tests.engine.test_leases",
            "tests.test_cli",
            ".",
            "tests.engine.conftest",
        ]
    }


def test_every_test_directory_is_a_package():
    """Each directory of tests has an __init__.py: its modules are tests.<dir>.test_x, so two
    directories may hold a test_x.py of the same name (pytest's default import mode)."""
    missing = sorted(
        str(path.parent.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if "__pycache__" not in path.parts and not (path.parent / "__init__.py").exists()
    )
    assert missing == []
