"""arm64 (issue 16): the device install resolves on linux/aarch64 from wheels alone, and
`sonoedge score` gives the same planes on an emulated arm64 Debian as here.

Both reach the package registries (PyPI's metadata; Debian's arm64 packages and the
aarch64 wheels), as `make test` does anyway. The emulated run needs root for debootstrap
and a private mount namespace (CI runs as root); it takes about 75 s from scratch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_the_device_install_resolves_on_aarch64_from_wheels_only():
    out = subprocess.run([sys.executable, "scripts/check_arm64.py"], capture_output=True,
                         text=True, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    print("\n" + summary)
    assert "no source build" in summary
    names = out.stdout.lower()
    for package in ("ai-edge-litert", "numpy", "opencv-python-headless", "paho-mqtt",
                    "cryptography", "aiohttp", "simplejpeg"):
        assert package in names, package


@pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and unshare -m need root")
def test_score_gives_the_same_planes_on_emulated_arm64(arm64_emulated_run):
    """scripts/arm64_emulated.sh, run beside the first tests (tests/conftest.py)."""
    code, output = arm64_emulated_run
    lines = [line for line in output.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    print("\n" + summary)
    assert code == 0, output[-3000:]
    assert "13/13 frames give the same plane as x86" in summary
