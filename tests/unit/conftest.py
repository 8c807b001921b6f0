"""tests/unit/: pure code only. Every test here runs without sockets, threads, subprocesses
or the database (an asyncio event loop may run, but connects nowhere), and the whole
directory in under 10 s; this conftest enforces the first part (a test that tries fails with
UnitTestUsedIO) and reports the time at the end of the run. A test that needs I/O belongs in
the directory of its area (tests/engine, ...), not here.

Layout: every directory under tests/ is a package (it has an __init__.py, so a module is
tests.unit.<area>.test_x and two areas may both have a test_x.py); tests import shared
code only from tests.helpers (tests/test_test_imports.py checks both)."""

from __future__ import annotations

import time

import pytest

from tests.helpers.noio import UnitTestUsedIO, refuse_io

BUDGET_SECONDS = 10.0
DB_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "live_server"}
_spent: list[float] = []


@pytest.fixture(autouse=True)
def no_io(request, monkeypatch):
    """Sockets, threads, processes and the database raise for the length of each test here
    (tests/helpers/noio.py). pytest-django's own blocker stays on too: a query without the
    db fixture raises RuntimeError."""
    wanted = DB_FIXTURES & set(request.fixturenames)
    if wanted or request.node.get_closest_marker("django_db"):
        raise UnitTestUsedIO(f"the database ({sorted(wanted) or 'django_db'}) in tests/unit/")
    refuse_io(monkeypatch)
    started = time.perf_counter()
    yield
    _spent.append(time.perf_counter() - started)


def pytest_terminal_summary(terminalreporter):
    if _spent:
        total = sum(_spent)
        verdict = "within" if total < BUDGET_SECONDS else "OVER"
        terminalreporter.write_line(
            f"tests/unit: {len(_spent)} tests, {total:.1f} s in test bodies "
            f"({verdict} the {BUDGET_SECONDS:.0f} s budget)"
        )
