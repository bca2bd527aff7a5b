"""`sonoedge-central districts FILE` replaces the district map, and the admin is told of the
clinics heard from that are on no district's map.

An officer's walk loaded a districts file whose first line was the spreadsheet's header
`clinic_id,district,name`: "15 clinics in 4 districts" for 14 in 3, a district called
`district` in the admin's menu, and a clinic "name (clinic_id)" counted among the silent
ones, for ever: a reload only inserted or updated, and nothing removed a clinic. Now the
header is skipped, the file is the whole map (what it leaves out is removed from the map,
not its messages), the load says what changed, a file that would remove half the map or
every clinic of a viewer's district is refused without --replace, and the clinics page of
every district names the clinics heard from that no district holds. Real parts: a seeded
SQLite database, the CLI as a process, `sonoedge-central serve`.
"""

from __future__ import annotations

import csv
import io
import time
from contextlib import contextmanager
from pathlib import Path

from central.dashboard import auth
from central.dashboard.seed import SeedSettings, seed
from central.dashboard.store import open_db, refresh
from tests import conftest_mqtt as fx
from tests.dashboard_harness import ADMIN, VIEWER, central, dashboard, login, request

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures: SQLite and PostgreSQL
# the seed's map: clinic-01 and -02 in district-1, clinic-03 and -04 in district-2
SEEDED = {"clinic-01": ("district-1", "Clinic 1"), "clinic-02": ("district-1", "Clinic 2"),
          "clinic-03": ("district-2", "Clinic 3"), "clinic-04": ("district-2", "Clinic 4")}


def _seeded(db_url: str, viewer_district: str = "") -> str:
    """A seeded district of 4 clinics, rolled up; an admin, and a viewer of
    `viewer_district` if given."""
    seed(db_url, SeedSettings(clinics=4, districts=2, days=14, seed=3, end_ts=time.time()))
    db = open_db(db_url)
    try:
        refresh(db)
        auth.add_user(db, ADMIN[0], "admin", "", ADMIN[1])
        if viewer_district:
            auth.add_user(db, VIEWER[0], "viewer", viewer_district, VIEWER[1])
    finally:
        db.close()
    return db_url


def _map(db_url: str) -> dict[str, tuple[str, str]]:
    db = open_db(db_url)
    try:
        return {c: (d, n) for c, d, n in db.query(
            "SELECT clinic_id, district, name FROM dash.clinics")}
    finally:
        db.close()


def _load(tmp: Path, db_url: str, text: str, *extra: str, name: str = "districts.csv"):
    path = tmp / name
    path.write_text(text)
    return path, central("districts", str(path), "--db", db_url, *extra)


def _lines(entries: dict[str, tuple[str, str]]) -> str:
    return "".join(f"{c},{d},{n}\n" for c, (d, n) in entries.items())


@contextmanager
def _pages(db_url: str, tmp: Path, *users: tuple[str, str]):
    """The dashboard serving the database: (base URL, a session cookie per user)."""
    with dashboard(db_url, tmp, "--no-cache") as base:
        yield base, [login(base, u) for u in users]


def _clinics_page(base: str, cookie: str, query: str = "") -> str:
    status, _, body = request(base, f"/clinics?weeks=8{query}", cookie)
    assert status == 200, (status, body[:300])
    return body.decode()


def test_a_header_line_is_skipped_and_said(tmp_path):
    db_url = _seeded(str(tmp_path / "central.sqlite3"))
    path, out = _load(tmp_path, db_url, "clinic_id,district,name\n" + _lines(SEEDED))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{path}:1: a header line, skipped",
                                       "4 clinics in 2 districts (no change)"]
    assert _map(db_url) == SEEDED

    # after comments, in any case, spaced, and with a spreadsheet's byte order mark
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf# exported\n\nClinic_ID , DISTRICT,Name\n"
                     + _lines(SEEDED).encode())
    out = central("districts", str(path), "--db", db_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"{path}:3: a header line, skipped"
    assert _map(db_url) == SEEDED

    # a header further down is two files run together: one line naming file and line,
    # and the map as it was
    path, out = _load(tmp_path, db_url, _lines(SEEDED) + "clinic_id,district,name\n",
                      name="twice.csv")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"sonoedge-central districts: {path}:5: a header line"), line
    # a bad line is still one line naming file and line, a header before it or not
    path, out = _load(tmp_path, db_url, "clinic_id,district\nclinic-01,district-1\n"
                      "clinic 2;oops\n", name="bad.csv")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert f"{path}:3: expected clinic_id,district" in line, line
    assert _map(db_url) == SEEDED


def test_reloading_a_corrected_file_removes_the_stale_clinics_from_the_map_and_the_page(
        tmp_path, url):
    db_url = _seeded(url, viewer_district="district-2")
    # a clinic since retired (never heard from), and what the header made of a file loaded
    # before it was skipped: a clinic "clinic_id" named "name" in a district "district"
    _, out = _load(tmp_path, db_url, _lines({**SEEDED, "clinic-99": ("district-2", "Old")}))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5 clinics in 2 districts (1 added: clinic-99)"
    db = open_db(db_url)
    try:
        with db.tx():
            db.execute("INSERT INTO dash.clinics (clinic_id, district, name) VALUES "
                       "('clinic_id', 'district', 'name')")
    finally:
        db.close()

    corrected = {**SEEDED, "clinic-04": ("district-1", "Clinic 4"),
                 "clinic-05": ("district-2", "New clinic")}
    _, out = _load(tmp_path, db_url, _lines(corrected))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "5 clinics in 2 districts (1 added: clinic-05; 2 removed: clinic-99, clinic_id; "
        "1 moved: clinic-04 district-2 -> district-1)")
    assert _map(db_url) == corrected

    with _pages(db_url, tmp_path, ADMIN) as (base, (admin,)):
        page = _clinics_page(base, admin)
        for gone in ("clinic-99", "clinic_id"):
            assert f'data-clinic="{gone}"' not in page
        assert ">district</a>" not in page  # the admin's menu of districts
        assert 'data-clinic="clinic-05"' in page and 'data-clinic="clinic-04"' in page
        rows = list(csv.DictReader(io.StringIO(
            request(base, "/api/clinics.csv?weeks=8", admin)[2].decode())))
        assert {r["clinic_id"] for r in rows} == set(corrected)
        # the clinic moved is in its new district's pages, and no longer its old one's
        assert 'data-clinic="clinic-04"' in _clinics_page(base, admin, "&district=district-1")
        assert 'data-clinic="clinic-04"' not in _clinics_page(base, admin,
                                                              "&district=district-2")


def test_a_file_that_would_empty_much_of_the_map_is_refused_without_replace(tmp_path, url):
    db_url = _seeded(url, viewer_district="district-2")
    # district-1's file alone, as when each district had its own file
    path, out = _load(tmp_path, db_url, _lines({c: v for c, v in SEEDED.items()
                                                if v[0] == "district-1"}))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"sonoedge-central districts: {path} would remove 2 of the 4 "
                           "clinics on the map (clinic-03, clinic-04)"), line
    assert "every clinic of district-2" in line and "--replace" in line, line
    assert _map(db_url) == SEEDED  # nothing changed

    # one clinic of district-2 left: a quarter of the map, its viewer still sees one
    _, out = _load(tmp_path, db_url, _lines({c: v for c, v in SEEDED.items()
                                             if c != "clinic-04"}))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3 clinics in 2 districts (1 removed: clinic-04)"

    # many removed, as meant: said, and named up to a bound
    db = open_db(db_url)
    try:
        with db.tx():
            for i in range(1, 9):
                db.execute("INSERT INTO dash.clinics (clinic_id, district, name) VALUES "
                           "(?, 'district-9', ?)", (f"old-{i:02d}", f"Old {i}"))
    finally:
        db.close()
    _, out = _load(tmp_path, db_url, _lines(SEEDED), "--replace")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "4 clinics in 2 districts (1 added: clinic-04; 8 removed: old-01, old-02, old-03, "
        "old-04, old-05 and 3 more)")
    assert _map(db_url) == SEEDED


def test_a_clinic_heard_from_in_no_district_is_named_to_the_admin_and_not_a_viewer(
        tmp_path, url):
    db_url = _seeded(url, viewer_district="district-2")
    # clinic-04 (district-2) sends messages and is left out of the file
    _, out = _load(tmp_path, db_url, _lines({c: v for c, v in SEEDED.items()
                                             if c != "clinic-04"}))
    assert out.returncode == 0, out.stderr
    note = ("<strong>1 clinic is in no district</strong> (clinic-04): add it to the districts "
            "file (sonoedge-central districts)")
    with _pages(db_url, tmp_path, ADMIN, VIEWER) as (base, (admin, viewer)):
        page = _clinics_page(base, admin)
        assert note in page
        # near the top: before the plot and the table that list it
        assert page.index(note) < page.index("<h2>Exams per day")
        assert 'data-clinic="clinic-04"' in page
        # an admin's page of one district holds none of them
        assert "in no district" not in _clinics_page(base, admin, "&district=district-2")
        # the viewer of the district it was in sees neither it nor the note
        page = _clinics_page(base, viewer)
        assert "in no district" not in page and "clinic-04" not in page
        assert 'data-clinic="clinic-03"' in page

    # put back on the map, the note goes
    _, out = _load(tmp_path, db_url, _lines(SEEDED))
    assert out.returncode == 0 and "1 added: clinic-04" in out.stdout, out.stdout
    with _pages(db_url, tmp_path, ADMIN) as (base, (admin,)):
        assert "in no district" not in _clinics_page(base, admin)


def test_a_dry_run_says_every_change_and_changes_nothing(tmp_path, url):
    """An admin checking a country's new map before loading it: every clinic it would add,
    remove, move or rename, one a line (the load's own summary names five of each), and
    whether the load would be refused; the map and its pages stay as they were."""
    db_url = _seeded(url, viewer_district="district-2")
    new = {**{c: v for c, v in SEEDED.items() if c != "clinic-04"},
           "clinic-02": ("district-2", "Clinic 2"), "clinic-03": ("district-2", "Clinic Three"),
           **{f"clinic-{i:02d}": ("district-3", f"Clinic {i}") for i in range(10, 17)}}
    _, out = _load(tmp_path, db_url, _lines(new), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "dry run, nothing changed: 10 clinics in 3 districts (7 added: clinic-10, "
        "clinic-11, clinic-12, clinic-13, clinic-14 and 2 more; 1 removed: clinic-04; "
        "1 moved: clinic-02 district-1 -> district-2; 1 renamed: clinic-03)",
        *[f"  add clinic-{i:02d}: district-3, Clinic {i}" for i in range(10, 17)],
        "  remove clinic-04: from district-2",
        "  move clinic-02: district-1 -> district-2",
        "  rename clinic-03: Clinic 3 -> Clinic Three"]
    assert _map(db_url) == SEEDED

    # a file that would be refused: said, exit status 1 (a script can tell it from a map
    # that would load), and still nothing changed
    path, out = _load(tmp_path, db_url, _lines({c: v for c, v in SEEDED.items()
                                                if v[0] == "district-1"}), "--dry-run")
    assert out.returncode == 1, out.stderr
    assert out.stdout.splitlines()[-1].startswith(
        "it would be refused: it would remove 2 of the 4 clinics on the map (clinic-03, "
        "clinic-04), every clinic of district-2"), out.stdout
    assert _map(db_url) == SEEDED
    # the same file loaded for real is refused as before
    _, out = _load(tmp_path, db_url, _lines({c: v for c, v in SEEDED.items()
                                             if v[0] == "district-1"}))
    assert out.returncode == 2 and _map(db_url) == SEEDED


def test_a_file_without_names_keeps_the_names_the_map_has(tmp_path, url):
    """A two-column file (`clinic_id,district`, as a district's IT keeps it) renamed every
    clinic of the map to its id: the clinics table read "clinic-01 (clinic-01)" where it had
    read "Clinic 1". A clinic the file gives no name (two fields, or an empty third) keeps
    the name the map has; only a clinic with none yet, new or nameless, is named by its id.
    The dry run says exactly that, and nothing of the names kept."""
    db_url = _seeded(url)
    db = open_db(db_url)
    try:
        with db.tx():  # on the map without a name (a row another tool wrote)
            db.execute("UPDATE dash.clinics SET name = '' WHERE clinic_id = 'clinic-04'")
    finally:
        db.close()
    before = {**SEEDED, "clinic-04": ("district-2", "")}
    text = ("clinic_id,district\nclinic-01,district-1\nclinic-02,district-2,\n"
            "clinic-03,district-2,  \nclinic-04,district-2\nclinic-05,district-1\n")
    path, out = _load(tmp_path, db_url, text, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"{path}:1: a header line, skipped",
        "dry run, nothing changed: 5 clinics in 2 districts (1 added: clinic-05; 1 moved: "
        "clinic-02 district-1 -> district-2; 1 renamed: clinic-04)",
        "  add clinic-05: district-1, clinic-05",
        "  move clinic-02: district-1 -> district-2",
        "  rename clinic-04: (no name) -> clinic-04"]
    assert _map(db_url) == before

    _, out = _load(tmp_path, db_url, text)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == (
        "5 clinics in 2 districts (1 added: clinic-05; 1 moved: clinic-02 district-1 -> "
        "district-2; 1 renamed: clinic-04)")
    after = {**SEEDED, "clinic-02": ("district-2", "Clinic 2"),
             "clinic-04": ("district-2", "clinic-04"), "clinic-05": ("district-1", "clinic-05")}
    assert _map(db_url) == after
    # loaded again: no change at all, said so
    _, out = _load(tmp_path, db_url, text)
    assert out.stdout.splitlines()[-1] == "5 clinics in 2 districts (no change)"
    assert _map(db_url) == after

    # a name the file gives still renames, beside lines that give none
    _, out = _load(tmp_path, db_url, "clinic-01,district-1,Mwembe\nclinic-02,district-2\n"
                                     "clinic-03,district-2\nclinic-04,district-2\n"
                                     "clinic-05,district-1,Kibaha Ward\n", "--dry-run")
    assert out.stdout.splitlines()[1:] == ["  rename clinic-01: Clinic 1 -> Mwembe",
                                           "  rename clinic-05: clinic-05 -> Kibaha Ward"]
    with _pages(db_url, tmp_path, ADMIN) as (base, (admin,)):
        page = _clinics_page(base, admin)
        assert "Clinic 3 <span" in page and "clinic-03 <span" not in page


def test_a_spreadsheets_quoted_name_with_a_comma_loads_and_a_bad_field_is_named(tmp_path):
    """A spreadsheet saves "Kibaha, Ward 3" quoted; split on every comma it was refused as
    `expected clinic_id,district[,name]`, the words a district with a space got too, neither
    saying which field was wrong."""
    db_url = _seeded(f"sqlite:///{tmp_path / 'central.sqlite3'}")
    quoted = {**SEEDED, "clinic-02": ("district-1", "Kibaha, Ward 3")}
    text = "".join(f'{c},{d},"{n}"\n' for c, (d, n) in quoted.items())
    path, out = _load(tmp_path, db_url, text)
    assert out.returncode == 0, out.stderr
    assert _map(db_url) == quoted
    for line, said in (("clinic-01,district 1,A", "district 'district 1' is not a district "
                                                   "name: a letter or digit, then"),
                       ("clinic-01,district-1,Kibaha, Ward 3", "4 fields (a name holding a "
                                                               "comma is quoted"),
                       ('clinic-01,district-1,"Kibaha, Ward 3', "a quote left open"),
                       ("clinic 1,district-1,A", "clinic_id 'clinic 1' is not a clinic id"),
                       ("clinic-01,district-1,A\tB", "the name holds a control character")):
        path, out = _load(tmp_path, db_url, _lines(SEEDED) + line + "\n", name="bad.csv")
        assert out.returncode == 2, (line, out.stderr)
        (err,) = out.stderr.strip().splitlines()
        assert f"{path}:5: expected clinic_id,district[,name], got " in err, err
        assert said in err, err
    assert _map(db_url) == quoted
