"""A bundle's self-test runs with no capability (found by the review of the page's clock,
eighth session of 5 December): the service holds CAP_SYS_TIME, ambient, so the
page can set the box's clock, and the self-test child inherited it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

SETS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


def _caps(status: str) -> dict[str, int]:
    return {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
            if line.split(":")[0] in SETS}


def test_the_self_test_child_drops_every_capability_it_inherited():
    with open("/proc/self/status") as f:
        if not _caps(f.read())["CapEff"]:
            pytest.skip("this test runs with no capability: there is none to drop")
    child = subprocess.run(
        [sys.executable, "-c", "from edge.fleet.selftest import drop_capabilities; "
         "drop_capabilities(); print(open('/proc/self/status').read())"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    assert _caps(child.stdout) == dict.fromkeys(SETS, 0)
