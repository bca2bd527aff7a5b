"""arm64 (issue 16): the device install resolves on linux/aarch64 from wheels alone
(`sonoedge score` on an emulated arm64 Debian: tests/test_score_on_emulated_arm64.py).

It reaches PyPI's metadata, as `make test` does anyway.
"""

from __future__ import annotations

import subprocess
import sys

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
