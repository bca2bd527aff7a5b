"""What a fuzzing pass of the district side found: inputs that hung the collector or the
publisher, a traceback, and stored rows that stopped the report and every rollup."""

from __future__ import annotations

import logging
import os
import sqlite3

import pytest

from central.collector import check
from central.dashboard.store import open_db, refresh
from central.db import Store
from central.report import build_report, format_report
from tests.dashboard_harness import central
from tests.test_central import message, row


@pytest.mark.parametrize("command", [
    ["--mqtt-url", "mqtts://central@127.0.0.1:1", "--db", "DB", "--duration-s", "1"],
    ["bundle", "publish", "nothing.bundle", "--group", "district-a", "--mqtt-url",
     "mqtts://publisher@127.0.0.1:1"]])
def test_a_tls_ca_that_is_a_pipe_is_one_line_not_a_wait_for_ever(tmp_path, command):
    """paho's tls_set opened the CA file with open(): a FIFO there hung the collector, and
    the publisher, for ever without a word (--duration-s did not end it). A folder or a
    missing file failed each connection with a reason that named no file."""
    os.mkfifo(tmp_path / "ca.fifo")
    args = [str(tmp_path / "c.sqlite3") if a == "DB" else a for a in command]
    for ca, reason in ((tmp_path / "ca.fifo", "not a regular file"),
                       (tmp_path, "a folder, not a file"),
                       (tmp_path / "none.pem", "no such file")):
        run = central(*args, "--tls-ca", str(ca), timeout_s=60)
        assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
        [line] = [x for x in run.stderr.splitlines() if x.startswith("sonoedge-central")]
        assert f"--tls-ca: {ca}: {reason}" in line, line


def test_a_user_in_the_url_that_is_no_utf8_is_one_line(tmp_path):
    """paho encodes the user name as UTF-8: bytes of another encoding in --mqtt-url (or a
    %-escape decoding to them) were a traceback."""
    for url in ("mqtt://%ff@127.0.0.1:1", os.fsdecode(b"mqtt://\xff@127.0.0.1:1")):
        run = central("--mqtt-url", url, "--db", str(tmp_path / "c.sqlite3"),
                      "--duration-s", "0.3")
        assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
        assert "not UTF-8 text" in run.stderr, run.stderr


DAMAGE = [("exam", "payload = 'not json'"), ("exam", "payload = '" + "[" * 100_000 + "'"),
          ("status", "payload = '[1, 2]'"), ("health", "payload = 'not json'"),
          ("exam", """payload = json_set(payload, '$.planes', json('{"4CH": "x"}'))""")]


@pytest.mark.parametrize(("kind", "edit"), DAMAGE, ids=[d[1][:30] for d in DAMAGE])
def test_a_stored_row_the_collector_did_not_write_costs_itself_not_the_report(
        tmp_path, kind, edit, caplog):
    """Another writer, or a damaged database, can leave a row the collector's checks
    would have refused. The report raised on it (JSONDecodeError, RecursionError,
    AttributeError, TypeError), and the dashboard's rollup raised on every pass and rolled
    up nothing after it. Now the row is left out and the rest is reported and rolled up."""
    path = str(tmp_path / "c.sqlite3")
    store = Store(path)
    rows = [row(message("exam", seq=s)) for s in (1, 2, 3)]
    rows += [row(message("health", seq=4)), row(message("status", seq=5, state="online"))]
    store.store(rows, [check("sonoedge/dev-a/exam", b"{", 4096, "c1", 1.0)])
    store.close()
    db = sqlite3.connect(path)
    db.execute(f"UPDATE messages SET {edit} WHERE kind = ? AND seq = (SELECT MAX(seq) FROM "
               "messages WHERE kind = ?)", (kind, kind))
    db.commit()
    db.close()
    store = Store(path)
    rep = build_report(store)
    assert rep["devices"][0]["exams"] == 3
    assert len(rep["recent_exams"]) == (2 if kind == "exam" else 3)
    assert "dev-a" in format_report(rep)
    store.close()
    caplog.set_level(logging.WARNING)
    dash = open_db(path)
    try:
        refresh(dash)
        rolled = dash.query("SELECT COUNT(*) FROM dash.exams")[0][0]
        assert rolled == (2 if kind == "exam" else 3)
    finally:
        dash.close()


def test_a_known_browser_logs_in_from_an_address_someone_else_guesses_from(tmp_path,
                                                                           monkeypatch):
    """Behind one address (an office's NAT, a proxy) one guesser braked every officer:
    their browsers that had logged in before (the known-browser cookie) were 429 too. A
    known browser now passes the address's brake; a forged cookie or a new browser does
    not, and the guesser stays braked."""
    from central.dashboard import auth
    from central.dashboard import config as C
    from central.dashboard.seed import SeedSettings, seed
    from central.dashboard.server import Dashboard, ServeSettings
    from tests.dashboard_harness import cookie_named, dashboard_in_thread
    from tests.test_dashboard import ADMIN, _login_from

    monkeypatch.setattr(C, "LOGIN_BRAKE_S", 60.0)
    db_path = str(tmp_path / "c.sqlite3")
    seed(db_path, SeedSettings(clinics=1, districts=1, days=2))
    db = open_db(db_path)
    auth.add_user(db, ADMIN[0], "admin", "", ADMIN[1])
    db.close()
    office = "127.0.4.10"
    with dashboard_in_thread(Dashboard(ServeSettings(db_url=db_path))) as port:
        status, headers = _login_from(port, office, *ADMIN)
        assert status == 303
        known = cookie_named(headers, C.KNOWN_COOKIE)
        for i in range(C.LOGIN_FREE_FAILURES + 2):  # names that do not exist
            assert _login_from(port, office, f"nobody{i}", "guess")[0] in (401, 429)
        assert _login_from(port, office, "nobody", "guess")[0] == 429
        assert _login_from(port, office, *ADMIN)[0] == 429  # a new browser waits
        forged = f"{C.KNOWN_COOKIE}={'0' * 64}"
        assert _login_from(port, office, *ADMIN, cookie=forged)[0] == 429
        assert _login_from(port, office, *ADMIN, cookie=known)[0] == 303
        assert _login_from(port, office, "nobody", "guess")[0] == 429  # still braked
        # and a stolen known cookie gives no unbraked guessing: its own wrong passwords
        # brake it, from any address
        for i in range(C.LOGIN_FREE_FAILURES + 1):  # the first few are free, as anyone's
            assert _login_from(port, f"127.0.5.{i + 1}", ADMIN[0], f"guess-{i}",
                               cookie=known)[0] == 401
        assert _login_from(port, "127.0.5.99", ADMIN[0], "guess-x", cookie=known)[0] == 429
        assert _login_from(port, "127.0.5.99", *ADMIN, cookie=known)[0] == 429


def test_a_registry_not_in_utf8_or_naming_a_device_twice_is_one_line_naming_the_file(
        tmp_path):
    """A registry in another encoding was refused in a line that named no file; and a
    device listed for two clinics silently took the last (the districts file refuses the
    same)."""
    from central.collector import read_registry

    path = tmp_path / "registry.csv"
    path.write_bytes("dev-a,clinic-1\ndev-b,clinique-\xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError) as refused:
        read_registry(path)
    assert str(refused.value) == f"{path}: not UTF-8 text (byte 30)", refused.value
    path.write_text("dev-a,clinic-1\n# moved?\ndev-a,clinic-2\n")
    with pytest.raises(ValueError) as refused:
        read_registry(path)
    assert str(refused.value) == f"{path}:3: device dev-a is already in clinic clinic-1"
    path.write_text("dev-a,clinic-1\ndev-a,clinic-1\n")  # the same line twice is no conflict
    assert read_registry(path) == {"dev-a": "clinic-1"}


def test_a_batch_of_rows_no_rollup_can_read_does_not_stop_the_rollup_for_ever(tmp_path):
    """More unreadable rows than a rollup batch within the watermark's overlap were read
    again by every batch: refresh never ended, and nothing after them was rolled up (found
    by the review of the eighth session of 5 December)."""
    import json

    from central.dashboard import config as C

    def arrived(payload: dict, at: float):  # all within a minute: inside the overlap
        return check(f"sonoedge/dev-a/{payload['kind']}", json.dumps(payload).encode(), 4096,
                     "c1", at, {"dev-a": "clinic-1"})

    path = str(tmp_path / "c.sqlite3")
    store = Store(path)
    n = C.REFRESH_BATCH + 50
    store.store([arrived(message("health", seq=s), 1000.0 + s * 0.02) for s in range(1, n + 1)],
                [])
    store.store([arrived(message("exam", seq=n + 1), 1060.0)], [])  # a good one after
    store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE messages SET seq = 'not a number' WHERE kind = 'health'")
    db.commit()
    db.close()
    dash = open_db(path)
    try:
        stats = refresh(dash, max_batches=10)  # it used to loop for ever without the limit
        assert stats.messages == n + 1
        assert refresh(dash, max_batches=10).messages == 0  # each one seen once
        assert dash.query("SELECT COUNT(*) FROM dash.exams")[0][0] == 1
    finally:
        dash.close()
