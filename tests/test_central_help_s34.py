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


def test_an_unknown_command_is_one_line_naming_it_and_the_commands(tmp_path):
    """`sonoedge-central frob` was taken as the collector's and answered "--mqtt-url is
    required" (a user's walk, 7 December): a first word that is no command is said as
    such, with the commands there are. The collector still starts from its flags alone,
    as the README runs it, and after `run`."""
    for word in ("frob", "reports", "Run", "", "a\nb\x1b[2J", "x" * 5000):
        proc = _central(word, "--db", str(tmp_path / "c.sqlite3"))
        assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith(f"sonoedge-central: error: unknown command {word[:20]!r}"[:-1])
        assert f"choose one of {', '.join(VERBS)}" in line and len(line) < 240, line
    for start in ((), ("run",)):
        proc = _central(*start, "--mqtt-url", "mqtt://127.0.0.1:1", "--db",
                        str(tmp_path / "c.sqlite3"), "--max-bytes", "-1")
        assert proc.returncode == 2 and proc.stderr.splitlines() == [
            "sonoedge-central: --max-bytes -1: must be 1-1048576"], proc.stderr


def test_an_unknown_word_after_run_is_one_line_naming_it_not_a_missing_mqtt_url(tmp_path):
    """`sonoedge-central run frob` still answered "--mqtt-url is required" (a fresh-eyes
    walk, 7 December): argparse checks the required flag before the words it does not
    know. The word is said first, as itself, wherever it stands; a missing --mqtt-url is
    still said when nothing else is wrong."""
    db = str(tmp_path / "c.sqlite3")
    for args, word in ((("run", "frob"), "frob"), (("run", "--db", db, "frob"), "frob"),
                       (("--mqtt-url", "mqtt://127.0.0.1:1", "frob"), "frob"),
                       (("run", "--frob"), "--frob"), (("run", "a\nb\x1b[2J"), "a\nb\x1b[2J"),
                       (("run", "x" * 5000), "x" * 5000)):
        proc = _central(*args)
        assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith(f"sonoedge-central: error: unknown argument {word[:20]!r}"[:-1])
        assert "--mqtt-url" not in line and "\x1b" not in line and len(line) < 240, line
    proc = _central("run", "frob", "bar")
    assert "unknown argument 'frob' (and 1 more)" in proc.stderr
    proc = _central("run", "--db", db)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "sonoedge-central: error: the following arguments are required: --mqtt-url "
        "(see sonoedge-central --help)"]
