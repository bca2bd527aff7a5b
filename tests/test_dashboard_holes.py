"""The sequence-hole search is a rollup, with exactly the holes of the full search.

The Clinics page (and the devices page's "missing") found holes by reading every message of
the period plus 30 days in device and seq order: over 104 weeks, every message stored. The
rollup keeps each device's exam and health seqs as runs of consecutive seqs per 7-day block
(``dash.seq_runs``) and the search reads those. ``scan_holes`` below is the old search, kept
verbatim as the reference: on generated streams (gaps, late messages that fill a hole after
the rollup ran, duplicates, resends, counter resets and jumps, clocks that date a message
out of order, boxes that move clinic, a box sending wild seqs; many devices, several
clinics and districts) the rollup's holes are the reference's, hole for hole and in order,
for every scope, period and lookback tried, and so are the Clinics page's cells and the
devices page's counts. On SQLite and on a real PostgreSQL (a database of its own per test).
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict

import pytest

from central.dashboard import config as C
from central.dashboard import queries, store
from central.dashboard.store import open_db, refresh
from central.db import Row, Store
from tests import conftest_mqtt as fx

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures

DAY = C.DAY_S



# -- the reference: the search the Clinics page ran before the rollup (schema 5) --------------
def scan_holes(db, scope: queries.Scope, per: queries.Period, lookback_days: int = 30
               ) -> list[queries.Hole]:
    Hole = queries.Hole
    w, p = scope.where()
    rows = db.query(
        "SELECT device_id, seq, day, clinic_id FROM dash.msgs WHERE day >= ? AND day <= ? "
        f"AND kind IN ('exam', 'health') AND {w}",
        (per.first_day - lookback_days, per.last_day, *p))
    rows.sort()
    out = []
    for i, (dev, seq, day, clinic) in enumerate(rows):
        if (i and rows[i - 1][0] == dev) or day < per.first_day or not 1 < seq <= C.SEQ_JUMP + 1:
            continue
        first = db.query("SELECT MIN(seq) FROM dash.msgs WHERE device_id = ? "
                         "AND kind IN ('exam', 'health')", (dev,))[0][0]
        if first is not None and int(first) == seq:
            out.append(Hole(dev, clinic, 1, int(seq) - 1, int(day), int(day)))
    for prev, row in zip(rows, rows[1:], strict=False):
        dev, seq, day, clinic = row
        if prev[0] != dev or day < per.first_day or seq - prev[1] <= 1:
            continue
        if seq - prev[1] - 1 > C.SEQ_JUMP:
            continue
        out.append(Hole(dev, clinic, int(prev[1]) + 1, int(seq) - 1, int(prev[2]), int(day)))
    return out


# -- helpers ---------------------------------------------------------------------------------
def msg(dev: str, clinic: str, seq: int, device_ts: float, received: float,
        kind: str = "exam", msg_id: str | None = None) -> Row:
    return Row(msg_id or str(uuid.uuid4()), dev, clinic, kind, seq, "boot-1", device_ts, 1.0,
               received, "c1", "{}")


DISTRICTS = {"clinic-1": "north", "clinic-2": "north", "clinic-3": "south"}  # clinic-4: none
SCOPES = [queries.Scope(None), queries.Scope("north"), queries.Scope("south"),
          queries.Scope("nowhere")]


def load_districts(db) -> None:
    with db.tx():
        for clinic, district in DISTRICTS.items():
            db.execute("INSERT INTO dash.clinics (clinic_id, district, name) VALUES (?, ?, ?) "
                       "ON CONFLICT (clinic_id) DO NOTHING", (clinic, district, clinic))


class MsgReads:
    """Counts the rows the hole search reads from dash.msgs (but for the one-row MIN(seq)
    look-ups of a box's first seq), and from dash.seq_runs."""

    def __init__(self, db):
        self.db, self.msgs, self.runs = db, 0, 0

    def __enter__(self):
        real = self.db.query

        def query(sql, params=()):
            rows = real(sql, params)
            if "FROM dash.msgs" in sql and "MIN(seq)" not in sql:
                self.msgs += len(rows)
            if "FROM dash.seq_runs" in sql:
                self.runs += len(rows)
            return rows

        self.db.query = query
        return self

    def __exit__(self, *exc):
        del self.db.query
        return False


def runs_of(db, dev: str) -> list[tuple]:
    return [tuple(int(x) for x in r) for r in db.query(
        "SELECT lo, hi, lo_day, hi_day FROM dash.seq_runs WHERE device_id = ? ORDER BY lo",
        (dev,))]


def spans(hs: list[queries.Hole]) -> list[tuple]:
    return [(h.device_id, h.clinic_id, h.first_seq, h.last_seq, h.after_day, h.before_day)
            for h in hs]


def checked_holes(db, scope, per, lookback_days: int = 30
                  ) -> tuple[list[queries.Hole], MsgReads]:
    """The rollup's holes, asserted equal to the reference's, and what the rollup's read."""
    with MsgReads(db) as reads:
        got = queries.holes(db, scope, per, lookback_days)
    want = scan_holes(db, scope, per, lookback_days)
    assert spans(got) == spans(want), (scope, per, lookback_days)
    return got, reads


def same_holes(db, scope, per, lookback_days: int = 30) -> list[queries.Hole]:
    return checked_holes(db, scope, per, lookback_days)[0]


# -- generated streams -----------------------------------------------------------------------
def generate(rng: random.Random, now: float, days: int = 110) -> list[Row]:
    """Messages of several boxes over ``days`` up to ``now``, as the collector would store
    them (the caller stores them in order of arrival): every way a sequence can go wrong."""
    rows: list[Row] = []
    clinics = ["clinic-1", "clinic-2", "clinic-3", "clinic-4"]
    end_day = int(now // DAY)
    for k in range(rng.randint(5, 8)):
        dev = f"box-{k}"
        clinic = rng.choice(clinics)
        seq = rng.choice([1, 1, 1, 2, 3, 40, 900, 1500])  # first messages lost, or not
        sent: list[Row] = []
        start = end_day - rng.randint(days // 2, days)
        wild = k == 0 and rng.random() < 0.5  # a box sending wild seqs
        for day in range(start, end_day + 1):
            if rng.random() < 0.15:
                continue  # switched off
            if rng.random() < 0.03:
                clinic = rng.choice(clinics)  # moved (and maybe back, later)
            for _ in range(rng.randint(0, 9)):
                t = day * DAY + rng.uniform(6 * 3600, 20 * 3600)
                r = rng.random()
                if r < 0.02:
                    seq = rng.randint(1, 5)  # counter reset (outbox lost)
                elif r < 0.03:
                    seq += rng.randint(C.SEQ_JUMP + 1, 5 * C.SEQ_JUMP)  # a broken counter
                elif r < 0.04:
                    seq += rng.randint(C.SEQ_JUMP - 3, C.SEQ_JUMP + 3)  # either side of it
                if wild:
                    seq = rng.randint(0, 2 ** 53 - 1) if rng.random() < 0.5 \
                        else rng.randint(0, 3000)
                kind = rng.choice(["exam", "health", "health"])
                lost = rng.random()
                if lost < 0.06:
                    seq += 1 if rng.random() < 0.8 else rng.randint(2, 40)
                    continue  # lost on the way (one, or a burst)
                received = t + rng.uniform(0.1, 30.0)
                if rng.random() < 0.08:
                    received = t + rng.uniform(DAY, 40 * DAY)  # late: a link down for days
                device_ts = t
                c = rng.random()
                if c < 0.03:
                    device_ts = 0.0  # no clock: dated by its arrival
                elif c < 0.05:
                    device_ts = received + rng.uniform(0, DAY)  # ahead, still believed
                row = msg(dev, clinic, seq, device_ts, received, kind)
                sent.append(row)
                d = rng.random()
                if d < 0.03:  # the same seq again under another msg_id (a reboot's)
                    sent.append(msg(dev, rng.choice([clinic, rng.choice(clinics)]), seq,
                                    device_ts + rng.choice([0, DAY, -3 * DAY]),
                                    received + rng.uniform(0, 3 * DAY), kind))
                elif d < 0.05 and sent:  # an old message queued again under a new seq
                    seq += 1
                    old = rng.choice(sent)
                    sent.append(msg(dev, clinic, seq, t, received + 1.0, old.kind,
                                    msg_id=old.msg_id))
                elif d < 0.07:  # a status: no seq of its own
                    sent.append(msg(dev, clinic, seq, t, received, "status"))
                seq += 1
        rows.extend(sent)
    return [r for r in rows if r.received_ts <= now]


def store_in_arrival_order(url: str, rows: list[Row], cuts: int, rng: random.Random,
                           between=None) -> None:
    """Store the rows as the collector would, in order of arrival, in ``cuts`` parts, the
    dashboard rolling up after each (so late messages fill holes already rolled up)."""
    rows = sorted(rows, key=lambda r: r.received_ts)
    edges = sorted(rng.sample(range(1, len(rows)), cuts - 1)) if cuts > 1 else []
    s = Store(url)
    try:
        for a, b in zip([0, *edges], [*edges, len(rows)], strict=True):
            s.store(rows[a:b], [])
            if between is not None:
                between()
    finally:
        s.close()


def check_everything(db, rng: random.Random, now: float, tries: int) -> int:
    """The rollup's holes against the reference's, for scopes, periods and lookbacks; returns
    the holes compared."""
    n = 0
    for _ in range(tries):
        weeks = rng.choice([1, 2, 4, 8, 8, 26, 104])
        at = now - rng.choice([0, 0, 0, 1, 2, 3, 5, 9, 17, 30]) * DAY + rng.uniform(-3, 3) * 3600
        per = queries.period(weeks, now=at)
        lookback = rng.choice([30, 30, 30, 0, 1, 6, 13, 45])
        n += len(same_holes(db, rng.choice(SCOPES), per, lookback))
    return n


@pytest.mark.parametrize("seed, cap", [(1, None), (2, None), (3, 2), (4, None), (5, 1),
                                       (6, 5)])
def test_the_rollups_holes_are_the_full_searchs_on_generated_streams(url, seed, cap,
                                                                     monkeypatch):
    if cap is not None:  # a tiny cap: most blocks spill, and are read message by message
        monkeypatch.setattr(C, "SEQ_RUNS_PER_BLOCK", cap)
    rng = random.Random(seed)
    now = float(int(1.75e9 // DAY) * DAY) + rng.uniform(0, DAY)  # a fixed day, any hour
    rows = generate(rng, now)
    Store(url).close()
    db = open_db(url)
    compared = [0]
    try:
        load_districts(db)

        def rolled_up() -> None:
            refresh(db)
            compared[0] += check_everything(db, rng, now, 6)

        store_in_arrival_order(url, rows, rng.randint(3, 7), rng, rolled_up)
        compared[0] += check_everything(db, rng, now, 40)
        for scope in SCOPES:  # the pages' counts, made from the reference's holes and ours
            per = queries.period(8, now=now)
            page = queries.clinics_page(db, scope, per)
            devs = queries.devices_page(db, scope, per, now=now)
            rollup, queries.holes = queries.holes, scan_holes
            try:
                want, want_devs = queries.clinics_page(db, scope, per), \
                    queries.devices_page(db, scope, per, now=now)
            finally:
                queries.holes = rollup
            assert [(c.clinic_id, c.day, c.holes, c.missing) for c in page.rows()] == \
                [(c.clinic_id, c.day, c.holes, c.missing) for c in want.rows()]
            assert [(d.device_id, d.missing, d.flags) for d in devs] == \
                [(d.device_id, d.missing, d.flags) for d in want_devs]
        # the search read the rollup: runs (or, past the cap, spilled blocks) for every box
        blocks = db.query("SELECT COUNT(*) FROM dash.seq_runs")[0][0] + \
            db.query("SELECT COUNT(*) FROM dash.seq_spill")[0][0]
        assert blocks > 0
        if cap is not None:
            assert db.query("SELECT COUNT(*) FROM dash.seq_spill")[0][0] > 0
        worst = db.query("SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM dash.seq_runs "
                         "GROUP BY block, device_id) t")[0][0]
        assert (worst or 0) <= C.SEQ_RUNS_PER_BLOCK
    finally:
        db.close()
    assert compared[0] > 20  # the streams did make holes to compare


def test_a_late_message_splits_then_closes_a_hole_the_rollup_had_recorded(url):
    now = float(int(1.75e9 // DAY) * DAY) + 15 * 3600  # a Sunday afternoon
    day = int(now // DAY) - 20  # three weeks ago: in a block the period holds whole
    t = day * DAY + 9 * 3600
    s = Store(url)
    s.store([msg("dev-a", "clinic-1", q, t + q, t + q + 1) for q in (1, 2, 3, 4, 8, 9, 10)],
            [])
    db = open_db(url)
    try:
        per = queries.period(8, now=now)
        refresh(db)
        assert runs_of(db, "dev-a") == [(1, 4, day, day), (8, 10, day, day)]
        hs, reads = checked_holes(db, queries.Scope(None), per)
        assert [(h.first_seq, h.last_seq) for h in hs] == [(5, 7)]
        assert reads.msgs == 0 and reads.runs == 2  # the runs alone, not the messages

        s.store([msg("dev-a", "clinic-1", 6, t + 6, now - 60)], [])  # arrives 20 days late
        refresh(db)
        assert runs_of(db, "dev-a") == [(1, 4, day, day), (6, 6, day, day), (8, 10, day, day)]
        hs, reads = checked_holes(db, queries.Scope(None), per)
        assert [(h.first_seq, h.last_seq) for h in hs] == [(5, 5), (7, 7)]  # split
        assert reads.msgs == 0
        page = queries.clinics_page(db, queries.Scope(None), per)
        assert page.cells[("clinic-1", day)].missing == 2

        s.store([msg("dev-a", "clinic-1", 7, t + 7, now - 30)], [])
        refresh(db)
        assert runs_of(db, "dev-a") == [(1, 4, day, day), (6, 10, day, day)]
        assert [(h.first_seq, h.last_seq) for h in same_holes(
            db, queries.Scope(None), per)] == [(5, 5)]  # shrunk

        # the last one comes without a clock: dated by its arrival, today, out of order
        s.store([msg("dev-a", "clinic-1", 5, 0.0, now - 10)], [])
        refresh(db)
        today = int((now - 10) // DAY)
        assert sorted(runs_of(db, "dev-a")) == [(1, 4, day, day), (5, 5, today, today),
                                                (6, 10, day, day)]
        for weeks in (1, 2, 8, 104):
            same_holes(db, queries.Scope(None), queries.period(weeks, now=now))
        assert same_holes(db, queries.Scope(None), per) == []
        assert refresh(db).messages == 0  # each message once
    finally:
        db.close()
        s.close()


def test_the_search_reads_runs_not_every_message_over_104_weeks(url):
    """Two years of three boxes, a message lost now and then: the 104-week search reads a
    run or two per box and week, never the 21,000 messages."""
    rng = random.Random(7)
    now = float(int(1.75e9 // DAY) * DAY) + 12 * 3600
    end = int(now // DAY)
    rows, lost = [], 0
    for k in range(3):
        seq, dropped = 0, 0
        for day in range(end - 700, end):
            for i in range(10):
                seq += 1
                if rng.random() < 0.003:
                    dropped += 1
                    continue
                lost += dropped  # lost, since a later one arrived
                dropped = 0
                t = day * DAY + 8 * 3600 + i * 600
                rows.append(msg(f"box-{k}", "clinic-1", seq, t, t + 1, "health"))
    s = Store(url)
    s.store(rows, [])
    s.close()
    db = open_db(url)
    try:
        refresh(db)
        hs, reads = checked_holes(db, queries.Scope(None), queries.period(104, now=now))
        assert reads.msgs == 0
        assert reads.runs <= 3 * 110 + len(hs)
        assert sum(h.size for h in hs) == lost and len(hs) > 10
        # a period that ended on a Friday, ten weeks ago: the later blocks are not read
        friday = (end - 70) - (end - 70 - 1) % 7  # day 1 was a Friday
        _, reads = checked_holes(db, queries.Scope(None),
                                 queries.period(8, now=friday * DAY + 20 * 3600))
        assert reads.msgs == 0 and reads.runs <= 3 * 13 + 20
    finally:
        db.close()


def test_a_box_sending_wild_seqs_spills_its_week_and_stays_bounded(url):
    now = float(int(1.75e9 // DAY) * DAY) + 12 * 3600
    day = int(now // DAY) - 10
    rng = random.Random(3)
    rows = [msg("box-wild", "clinic-1", rng.randint(0, 2 ** 53 - 1), day * DAY + i, day * DAY + i)
            for i in range(C.SEQ_RUNS_PER_BLOCK * 3)]
    rows += [msg("box-wild", "clinic-1", q, day * DAY + 5000 + q, day * DAY + 5000 + q)
             for q in (1, 2, 5, 6)]  # and a real hole among them
    rows += [msg("box-ok", "clinic-1", q, day * DAY + q, day * DAY + q) for q in (1, 2, 4)]
    s = Store(url)
    s.store(rows, [])
    s.close()
    db = open_db(url)
    try:
        refresh(db)
        block = store.seq_block(day)
        assert db.query("SELECT block, device_id FROM dash.seq_spill") == [(block, "box-wild")]
        assert db.query("SELECT COUNT(*) FROM dash.seq_runs WHERE device_id = 'box-wild'"
                        ) == [(0,)]
        assert runs_of(db, "box-ok") == [(1, 2, day, day), (4, 4, day, day)]
        hs = same_holes(db, queries.Scope(None), queries.period(2, now=now))
        assert ("box-wild", 3, 4) in [(h.device_id, h.first_seq, h.last_seq) for h in hs]
        assert ("box-ok", 3, 3) in [(h.device_id, h.first_seq, h.last_seq) for h in hs]
        # more of it later changes nothing of the rollup's size
        s = Store(url)
        s.store([msg("box-wild", "clinic-1", rng.randint(0, 2 ** 53 - 1), day * DAY + 9000 + i,
                     now - 100 + i) for i in range(50)], [])
        s.close()
        refresh(db)
        assert db.query("SELECT COUNT(*) FROM dash.seq_runs WHERE device_id = 'box-wild'"
                        ) == [(0,)]
        same_holes(db, queries.Scope(None), queries.period(2, now=now))
    finally:
        db.close()


def test_the_schema_bump_rebuilds_the_runs_of_a_version_5_install(url):
    """A version-5 dashboard had rolled every message up, with no runs: opening it again
    drops its rollups and rebuilds them from the messages, runs included."""
    now = float(int(1.75e9 // DAY) * DAY) + 12 * 3600
    day = int(now // DAY) - 9
    s = Store(url)
    s.store([msg("dev-a", "clinic-1", q, day * DAY + q, day * DAY + q) for q in (1, 2, 6, 7)],
            [])
    s.close()
    db = open_db(url)
    try:
        refresh(db)
        with db.tx():  # what version 5 left: no runs, every message rolled up
            db.execute("DROP TABLE dash.seq_runs")
            db.execute("DROP TABLE dash.seq_spill")
            db.execute("UPDATE dash.meta SET value = '5' WHERE key = 'schema'")
    finally:
        db.close()
    db = open_db(url)
    try:
        assert db.query("SELECT value FROM dash.meta WHERE key = 'schema'") == [
            (store.SCHEMA_VERSION,)]
        assert db.query("SELECT COUNT(*) FROM dash.msgs") == [(0,)]  # dropped, to rebuild
        assert refresh(db).messages == 4
        assert runs_of(db, "dev-a") == [(1, 2, day, day), (6, 7, day, day)]
        hs = same_holes(db, queries.Scope(None), queries.period(2, now=now))
        assert [(h.first_seq, h.last_seq) for h in hs] == [(3, 5)]
    finally:
        db.close()


def test_runs_merge_as_the_seqs_they_hold():
    """merge_runs against the seqs themselves: every run is a maximal set of consecutive
    seqs, its first seq's day the earliest of that seq's, its last seq's the latest."""
    rng = random.Random(11)
    for _ in range(300):
        seen: dict[int, list[int]] = defaultdict(list)
        runs: list[list[int]] = []
        for _ in range(rng.randint(1, 40)):
            q, d = rng.randint(1, 30), rng.randint(100, 110)
            seen[q].append(d)
            runs = store.merge_runs([*runs, [q, q, d, d, d, d]])
        want, seqs = [], sorted(seen)
        for q in seqs:
            if want and q == want[-1][1] + 1:
                want[-1][1], want[-1][3] = q, max(seen[q])
            else:
                want.append([q, q, min(seen[q]), max(seen[q])])
        for w in want:
            days = [d for q in range(w[0], w[1] + 1) for d in seen[q]]
            w.extend([min(days), max(days)])
        assert runs == want
