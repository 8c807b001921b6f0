"""The test run's entry point (loaded by `-p` in pyproject's addopts): the files of
superimap.platform.prepare around pytest-django's set-up. The development secrets must be
there before pytest-django reads the settings; VAR_DIR, the SQLite file and STATIC_ROOT
are made once the settings are read, before any test touches the database."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from django.conf import settings

from superimap.platform.prepare import prepare_files, prepare_secrets


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args) -> Generator[None, None, None]:
    prepare_secrets()
    result = yield
    if settings.configured:
        prepare_files(settings)
    return result
