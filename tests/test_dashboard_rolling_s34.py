"""A dashboard started on months of messages says it is still rolling them up (found on a
new user's fresh-clone walk, eighth session of 5 December): for the 20 s its first rollup
took, every page showed the seeded district as empty ("0 exams"), with nothing to say the
figures were not there yet."""

from __future__ import annotations

import re
import time

from central.dashboard import auth, queries
from central.dashboard import config as C
from central.dashboard import server as dash_server
from central.dashboard.seed import SeedSettings, seed
from central.dashboard.server import Dashboard, ServeSettings
from central.dashboard.store import open_db
from tests.dashboard_harness import dashboard_in_thread, login, request

ADMIN = ("ada", "a long enough password 1")
NOTE = "Still rolling up the collector's messages"


def _exams(page: str) -> int:
    return int(re.search(r"([\d,]+) exams?\b", page).group(1).replace(",", ""))


def test_pages_say_the_rollup_is_catching_up_until_it_has(tmp_path, monkeypatch):
    db_path = str(tmp_path / "c.sqlite3")
    seed(db_path, SeedSettings(clinics=4, days=60))
    db = open_db(db_path)
    auth.add_user(db, ADMIN[0], "admin", "", ADMIN[1])
    db.close()
    # small steps, each a little slow: the catching up is long enough to be seen
    monkeypatch.setattr(C, "REFRESH_BATCH", 50)
    monkeypatch.setattr(C, "REFRESH_STEP_BATCHES", 1)
    real_refresh = dash_server.refresh

    def slow_refresh(*args, **kwargs):
        time.sleep(0.05)
        return real_refresh(*args, **kwargs)

    monkeypatch.setattr(dash_server, "refresh", slow_refresh)
    dash = Dashboard(ServeSettings(db_url=db_path, refresh_every_s=0.2))
    with dashboard_in_thread(dash) as port:
        dash.start_refresher()
        base = f"http://127.0.0.1:{port}"
        cookie = login(base, ADMIN)
        status, _, body = request(base, "/quality?weeks=8", cookie)
        assert status == 200 and NOTE in body.decode(), body.decode()[:2000]
        deadline = time.monotonic() + 120
        while NOTE in body.decode():
            assert time.monotonic() < deadline, "the rollup never caught up"
            time.sleep(0.3)
            body = request(base, "/quality?weeks=8", cookie)[2]
        page = body.decode()
        db = open_db(db_path)
        try:
            whole = queries.quality_page(db, queries.Scope(None), queries.period(8))
        finally:
            db.close()
    assert dash.last_refresh["rolled"] > 20 * C.REFRESH_BATCH
    assert _exams(page) == whole.exams > 0  # once the note goes, every exam is counted
