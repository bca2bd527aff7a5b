"""The district's report names the boxes it provisioned and never heard from.

A fleet engineer's walk: a box in the registry that never connected (a wrong password, a
wrong broker URL, a box never switched on) appeared nowhere in `sonoedge-central report`:
the district could not tell a silent clinic's box was never set up. With `--registry`,
each such box is listed under its clinic, said to be never heard from, and counted among
its clinic's devices. Real parts: the collector's own check of each payload, the store,
and the `sonoedge-central report` command as a process.
"""

from __future__ import annotations

import json
import subprocess
import sys

from central.db import Store
from tests.conftest_mqtt import REPO, py_env
from tests.test_central import message, row


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "central.cli", "report", *args],
                          capture_output=True, text=True, timeout=60, env=py_env(),
                          cwd=str(REPO))


def test_a_registered_box_never_heard_from_is_listed_under_its_clinic(tmp_path):
    db = str(tmp_path / "c.sqlite3")
    store = Store(db)
    try:
        store.store([row(message("exam", seq=1))], [])  # dev-a, of clinic-1, has sent
    finally:
        store.close()
    registry = tmp_path / "devices.csv"
    registry.write_text("# device,clinic\ndev-a,clinic-1\ndev-z,clinic-9\n")

    out = _report("--db", db, "--registry", str(registry), "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    by_id = {d["device_id"]: d for d in rep["devices"]}
    assert by_id["dev-z"]["never_heard"] is True and by_id["dev-z"]["clinic_id"] == "clinic-9"
    assert by_id["dev-z"]["exams"] == 0 and by_id["dev-z"]["last_seen_ts"] is None
    assert by_id["dev-a"]["never_heard"] is False
    clinics = {c["clinic_id"]: c for c in rep["clinics"]}
    assert clinics["clinic-9"]["devices"] == 1 and clinics["clinic-9"]["exams"] == 0

    text = _report("--db", db, "--registry", str(registry)).stdout
    (line,) = [ln for ln in text.splitlines() if ln.startswith("dev-z")]
    assert "never heard from (in the registry)" in line and "clinic-9" in line

    # without the registry, the report is as it was: only the boxes that sent
    rep = json.loads(_report("--db", db, "--json").stdout)
    assert [d["device_id"] for d in rep["devices"]] == ["dev-a"]


def test_a_registry_that_cannot_be_read_is_one_line_naming_it(tmp_path):
    db = str(tmp_path / "c.sqlite3")
    Store(db).close()
    bad = tmp_path / "devices.csv"
    bad.write_text("dev-a,clinic-1\nnot a line\n")
    for path, words in ((bad, "devices.csv:2"), (tmp_path / "missing.csv", "missing.csv"),
                        (tmp_path, "")):
        out = _report("--db", db, "--registry", str(path))
        assert out.returncode == 2 and out.stdout == "", out
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith("sonoedge-central report: --registry: ") and words in line, line
