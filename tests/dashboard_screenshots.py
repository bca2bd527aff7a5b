"""`make screenshots` (second part): the district dashboard's pages under build/screenshots/.

A simulated district (20 clinics in 4 districts, one year; central/dashboard/seed.py) is
served by `sonoedge-central serve`; Debian's headless Chromium saves every page as an admin
on a desktop (1280 px) and the clinics, devices, biometry and one clinic's pages as a
district viewer on a phone (390 px); the clinic's page is the first clinic of the viewer's
district, on both. Not committed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from central.dashboard.seed import SeedSettings, clinic_ids, district_of, seed
from central.dashboard.store import open_db, refresh
from tests.conftest import REPO
from tests.dashboard_harness import central, dashboard
from tests.web_harness import CHROMIUM, CHROMIUM_ARGS

OUT = REPO / "build" / "screenshots"
# The Clinics page over a year too: past 8 weeks it draws a cell per week.
PAGES = ("clinics", "clinics?weeks=52", "completeness", "quality", "biometry", "devices")
ADMIN = ("officer", "admin-password-1")
VIEWER = ("viewer", "viewer-password-1")
VIEWER_DISTRICT = "district-2"
SEEDED = SeedSettings(clinics=20, districts=4, days=365)


def _clinic_page() -> str:
    """One clinic's page (`/clinic/<id>`): the first clinic of the viewer's district, so the
    viewer may see it too."""
    ids = clinic_ids(SEEDED.clinics)
    first = next(c for i, c in enumerate(ids)
                 if district_of(i, SEEDED.clinics, SEEDED.districts) == VIEWER_DISTRICT)
    return f"clinic/{first}"


def _shoot(browser, base: str, user: tuple[str, str], viewport: dict, prefix: str,
           pages: tuple[str, ...]) -> None:
    page = browser.new_context(viewport=viewport, device_scale_factor=1).new_page()
    page.goto(base + "/login")
    if prefix == "dashboard-desktop":
        page.screenshot(path=str(OUT / "dashboard-login.png"))
    page.fill("input[name=username]", user[0])
    page.fill("input[name=password]", user[1])
    with page.expect_navigation():
        page.click("button[type=submit]")
    for name in pages:
        page.goto(f"{base}/{name}")
        # clinics?weeks=52 -> clinics-52.png; clinic/clinic-06 -> clinic.png
        shot = name.split("/")[0].replace("?weeks=", "-")
        page.screenshot(path=str(OUT / f"{prefix}-{shot}.png"), full_page=True)
    page.context.close()


def _registry_with_two_never_heard(db: str) -> None:
    """The district's registry as its collector keeps it: every seeded box, and two more
    provisioned nine days ago and never heard from (the devices page lists them)."""
    import time

    from central.db import Store

    store = Store(db)
    try:
        boxes = dict(store.query("SELECT device_id, MIN(clinic_id) FROM messages "
                                 "GROUP BY device_id"))
        clinics = sorted(set(boxes.values()))
        store.set_registry({**boxes, "box-new-1": clinics[0], "box-new-2": clinics[-1]},
                           time.time() - 9 * 86400)
    finally:
        store.close()


def main() -> int:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sonoedge-dash-shots-") as tmp_name:
        tmp = Path(tmp_name)
        db = str(tmp / "district.sqlite3")
        seed(db, SEEDED)
        _registry_with_two_never_heard(db)
        d = open_db(db)
        refresh(d)
        d.close()
        for args, stdin in ((["users", "add", ADMIN[0], "--role", "admin"], ADMIN[1]),
                            (["users", "add", VIEWER[0], "--role", "viewer", "--district",
                              VIEWER_DISTRICT], VIEWER[1])):
            out = central(*args, "--db", db, stdin=stdin + "\n")
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
        with dashboard(db, tmp) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=CHROMIUM_ARGS)
            try:
                _shoot(browser, base, ADMIN, {"width": 1280, "height": 900},
                       "dashboard-desktop", (*PAGES, _clinic_page()))
                _shoot(browser, base, VIEWER, {"width": 390, "height": 844},
                       "dashboard-phone", ("clinics", "devices", "biometry", _clinic_page()))
            finally:
                browser.close()
    for path in sorted(OUT.glob("dashboard-*.png")):
        print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
