"""Run the installed `superimap` command in a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devtools.testing import free_port

SUPERIMAP = str(Path(sys.executable).with_name("superimap"))


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "VAR_DIR": str(tmp_path),
        "PORT": str(free_port()),  # `check` tries the web port; others use 8000 here
    }
    return subprocess.run(
        [SUPERIMAP, *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
