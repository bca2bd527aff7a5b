"""Running the `sonoedge` command as a user would, and what a good error looks like."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def sonoedge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Bad input: exactly one `sonoedge: error` line naming `needles`, never a traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sonoedge: error")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]
