"""arm64 (issue 16): `sonoedge score` gives the same planes on an emulated arm64 Debian as
here (scripts/arm64_emulated.sh).

It reaches Debian's arm64 packages and the aarch64 wheels, needs root for debootstrap and a
private mount namespace (CI runs as root), and takes about 60-75 s from scratch. It runs as
a background job from the start of the session (tests/conftest.py `BACKGROUND`); this
module, named for what it checks, comes late in the run, by when the job is done.
"""

from __future__ import annotations

import os

import pytest


@pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and unshare -m need root")
def test_score_gives_the_same_planes_on_emulated_arm64(arm64_emulated_run):
    """scripts/arm64_emulated.sh, run beside the first tests (tests/conftest.py)."""
    code, output = arm64_emulated_run
    lines = [line for line in output.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    print("\n" + summary)
    assert code == 0, output[-3000:]
    assert "13/13 frames give the same plane as x86" in summary
