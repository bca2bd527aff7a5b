"""A file given on the command line as a relative path was named in its one-line error as
written: `--config ./x.toml` said `x.toml: config file not found`. An installer reads
that line later, in the service's log, from another folder, where `./x.toml` names nothing
(a fresh-eyes walk). The shared place that names a path in a line (`wire.shown.shown_path`)
now shows a path absolute, made from the folder the command ran in; a source spec that is
no file (`v4l2:0`, `demo`) is shown as given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.cli_run import one_line_error
from tests.conftest import REPO
from wire.shown import shown_path


def sonoedge_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=folder, env=env)


def test_a_relative_config_or_source_is_named_absolute_in_its_error_line(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "bad.toml").write_text("[exam]\nend_gap_s = -4.0\n")
    cases = [
        (("exam", "--config", "./x.toml", "y.png"), f"{tmp_path}/x.toml: config file not found"),
        (("models", "--config", "sub/../x.toml"), f"{tmp_path}/x.toml: config file not found"),
        (("exam", "--config", "bad.toml", "y.png"), f"{tmp_path}/bad.toml: exam.end_gap_s"),
        (("run", "--once", "--source", "./clip.avi", "--state-dir", "state"),
         f"{tmp_path}/clip.avi: no such file or folder"),
    ]
    for args, said in cases:
        proc = sonoedge_in(tmp_path, *args)
        line = one_line_error(proc)
        assert line.startswith(f"sonoedge: error: {said}"), (args, line)
        assert proc.returncode == 2


def test_a_path_is_shown_absolute_and_a_spec_as_given():
    here = os.getcwd()
    assert shown_path(Path("device.toml")) == f"{here}/device.toml"
    assert shown_path(Path("./a/../device.toml")) == f"{here}/device.toml"
    assert shown_path(Path("/etc/sonoedge/device.toml")) == "/etc/sonoedge/device.toml"
    for spec in ("v4l2:0", "demo", "picamera2:1", "rtsp://cam/1"):
        assert shown_path(spec) == spec
    # still one printable line, cut in its middle, keeping the file's name
    assert shown_path(Path("a\nb.toml")) == f"{here}/a\\x0ab.toml"
    long = shown_path(Path("d" * 5000) / "device.toml")
    assert len(long) <= 200 and long.startswith(here[:20]) and long.endswith("device.toml")
