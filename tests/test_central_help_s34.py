"""`sonoedge-central --help` names every command (a new user's walk, eighth session of 5
December): it listed only the collector's flags, and report, serve, users, districts,
seed and bundle appeared only in a last usage line."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest_mqtt import REPO, py_env

VERBS = ("run", "report", "serve", "users", "districts", "seed", "bundle")


def _central(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "central.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=py_env())


def test_the_help_names_every_command_and_each_has_its_own_help():
    top = _central("--help")
    assert top.returncode == 0, top.stderr
    listed = {line.split()[0] for line in top.stdout.split("\n\n")[0].splitlines()[1:]}
    assert listed == set(VERBS), top.stdout
    for verb in VERBS[1:]:
        own = _central(verb, "--help")
        assert own.returncode == 0 and "usage" in own.stdout.lower(), (verb, own.stderr)
