"""`python -m tests.seed_two_year FOLDER`: the seeded two-year district the dashboard's
scale tests read (50 clinics in 5 districts, 2 years; health every 4 h instead of every
hour, which only the rollup's work depends on), rolled up, into FOLDER/central.sqlite3.

Run by tests/conftest.py (`BACKGROUND`) beside the first tests, on the second core, once
collection shows a test needs it: seeding and rolling it up took 40-50 s when this was
written, 90 s of one worker on an AMD EPYC without VNNI on 7 December (the rollup has
grown), and about half that since with half the exams (`make`), which the suite waits for."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from central.dashboard.seed import SeedSettings, seed
from central.dashboard.store import open_db, refresh

DB_NAME = "central.sqlite3"


def make(folder: Path) -> Path:
    path = folder / DB_NAME
    # half the exams of `sonoedge-central seed` (~50,000): the pages read two years of 50
    # clinics whatever their count, and the biometry page still has thousands of heads out;
    # the whole seed was 90 s of one worker's 20 minutes
    seed(str(path), SeedSettings(health_every_s=4 * 3600, exams_per_clinic_day=1.9,
                                 end_ts=time.time()))
    db = open_db(str(path))
    try:
        refresh(db)
    finally:
        db.close()
    return path


if __name__ == "__main__":
    make(Path(sys.argv[1]))
