"""Each page's plots (SVG), tables and CSV, from the rows of ``queries.py``.

A plot and its CSV are made from the same list, so the CSV is always the numbers behind
the plot. Every drawn mark carries its numbers as ``data-*`` attributes (and a ``<title>``
for the hover), which is what the browser tests compare with the database.
"""

from __future__ import annotations

import csv
import io
import math
import time

from central.dashboard import config as C
from central.dashboard import queries as Q
from central.dashboard import reference as R
from central.dashboard.auth import CLINIC_RE
from central.dashboard.svg import (
    BLUES,
    GREY,
    INK,
    MUTED,
    ORANGE,
    ORANGES,
    Svg,
    bin_colour,
    esc,
    fit_width,
    hbars,
    legend,
    legend_width,
    text_width,
)
from wire.dating import HADLOCK_1984_WEEKS, hadlock_hc_mm

EXAM_EDGES = [1, 3, 5, 8]  # exams a day: 0 | 1-2 | 3-4 | 5-7 | 8+ (clinics do 0-10)
WEEKEND = "#f0f0f0"  # a clinic closed at the weekend is silent as expected: lighter grey


def plural(n: int, one: str, many: str | None = None) -> str:
    """ "1 exam", "3 exams": a count with its unit, singular when it is one."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def clinic_text(clinic_id: str, name: str = "") -> str:
    """A clinic in plain text (a hover title, a line): its name and id, or the id alone."""
    return f"{name} ({clinic_id})" if name else clinic_id


def clinic_html(clinic_id: str, name: str = "", weeks: int | None = None) -> str:
    """A clinic in a table cell: its name, the id beside it in small type (what IT and the
    registry call it); a clinic the district map gives no name is its id, as before. With
    `weeks` (the period shown), a link to the clinic's page for that period."""
    text = (f'{esc(name)} <span class="small">({esc(clinic_id)})</span>' if name
            else esc(clinic_id))
    href = None if weeks is None else clinic_href(clinic_id, weeks)
    return text if href is None else f'<a href="{esc(href)}">{text}</a>'


def clinic_href(clinic_id: str, weeks: int | None = None) -> str | None:
    """The clinic's page for the period shown; None for an id no page can have: the boxes
    no registry lists (C.UNREGISTERED), or "." and "..", a path's own steps to a browser."""
    if not CLINIC_RE.match(clinic_id) or not clinic_id.strip("."):
        return None
    return f"/clinic/{clinic_id}" + (f"?weeks={weeks}" if weeks else "")


def fit(text: str, chars: int) -> str:
    """Text cut to a plot's label column (the whole of it goes in the hover title)."""
    return text if len(text) <= chars else text[:chars - 1] + "\u2026"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


NO_EXAMS = "no exams in this period"


def share_of(share: float | None, exams: int) -> str:
    """ "40% of 10 exams"; with no exams, that in words: a share of none read "- of 0
    exams"."""
    return f"{pct(share)} of {plural(exams, 'exam')}" if exams else NO_EXAMS


def ago(ts: float | None, now: float) -> str:
    return "never" if ts is None else f"{Q.age_text(max(0.0, now - ts))} ago"


def seen_ago(ts: float | None, now: float) -> str:
    """When a box was last heard, said as its silent flag counts (`Q.silence_text`)."""
    return "never" if ts is None else f"{Q.silence_text(max(0.0, now - ts))} ago"


def utc(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def to_csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        # a cell starting with = + - @ would be a formula in a spreadsheet, and so would one
        # after a tab or carriage return, which some strip first (OWASP's list): quote it away
        w.writerow([_cell_text(v) if isinstance(v, str) else "" if v is None else v
                    for v in r])
    return buf.getvalue()


def with_district(text: str, districts: dict[str, str]) -> str:
    """A CSV with a `clinic_id` column gains the clinic's district (the map's; "" for a
    clinic in none) as its last column: the admin's all-district downloads had no district,
    so a table per district needed the districts file beside them. Last, so that a script
    reading the columns by position reads what it read before (a column a CSV gains later
    comes before it: the district is always the last)."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if not header or "clinic_id" not in header:
        return text
    at = header.index("clinic_id")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*header, "district"])
    for r in rows:
        w.writerow([*r, _cell_text(districts.get(r[at], "")) if at < len(r) else ""])
    return buf.getvalue()


def _cell_text(text: str) -> str:
    """A text cell as a spreadsheet reads it: no formula, and a carriage return (which the
    writer, ending lines with LF, leaves unquoted: a reader starts a row there, so a device's
    error text could forge one) made a line feed, which it quotes."""
    # a lone "-" (the pages' "no value", as `utc` gives it) is no formula to any spreadsheet:
    # quoted, an empty time read "'-"
    text = "'" + text if text[:1] in FORMULA_STARTS and text != "-" else text
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- clinics ---------------------------------------------------------------------------------
# Exams a week: the day's bins over a five-day week, so a week reads like its typical day.
WEEK_EXAM_EDGES = [1, 15, 25, 40]
ROW_H = 15  # a clinic's row in the clinics plots
# Beside the cells, in px: the clinic's name, right-aligned, a gap on each side; after the
# cells a gap, the totals (exams, silent weekdays, messages missing: their right edges) and
# the name again, a margin after it (a phone opens the plot at its latest end).
NAME_GAP, TOTALS_GAP, TOTALS_RIGHT, TOTALS_NAME_X, NAME_END = 6, 8, (40, 100, 160), 172, 4
# The width a clinic's name may take in each of its two columns: what the 8-week daily plot
# leaves of a laptop's plot box beside its days and totals (118 px: about 18 characters,
# C.CLINICS_DAY_W); a longer name ends in "…" and its hover title gives it whole.
CLINIC_NAME_W = (C.PLOT_BOX_W - 7 * C.CLINICS_DAILY_WEEKS * C.CLINICS_DAY_W
                 - 2 * NAME_GAP - TOTALS_GAP - TOTALS_NAME_X - NAME_END) // 2
NOT_HEARD = "not heard: the collector had stopped"
# A clinic's exams the midwife withdrew, as its page and the clinics' table say them
WITHDRAWN_WORDS = "exams withdrawn by the midwife"
HOLE_KEY_W = 12  # the legend's orange dot and its gap, before its words


def clinics_svg(page: Q.ClinicsPage) -> str:
    """A cell per clinic and day up to CLINICS_DAILY_WEEKS, each with its hover; beyond,
    a cell per week (``clinics_weeks_svg``): 104 weeks of days were 36,400 cells, 8.4 MB."""
    if len(page.period.days) > 7 * C.CLINICS_DAILY_WEEKS:
        return clinics_weeks_svg(page)
    days, cw = page.period.days, C.CLINICS_DAY_W
    # after a stopped collector's day the district heard nothing: hatched, and a legend key
    unheard_from = page.quiet_day if page.quiet_day is not None else days[-1] + 1
    not_heard_shown = any(page.cells[(c, d)].silent for c in page.clinics
                          for d in days if d >= unheard_from)
    keys = [(GREY, "silent weekday"), (WEEKEND, "silent weekend, or before the first message"),
            ("#fff", "0 exams"), (BLUES[1], "1-2"), (BLUES[2], "3-4"), (BLUES[3], "5-7"),
            (BLUES[4], "8+")]
    hole_words = "a hole in the box's message sequence touches this day"
    svg, (label_w, top) = _clinics_frame(
        page, cw, len(days), "Exams per day per clinic, silent days and sequence holes",
        legend_width(keys) + HOLE_KEY_W + text_width(hole_words),
        extra_h=18 if not_heard_shown else 0)
    not_heard = svg.hatch("not-heard", C.NOT_HEARD_HATCH) if not_heard_shown else None
    cells_end = label_w + len(days) * cw
    for i, d in enumerate(days):
        x = label_w + i * cw
        if (d + 3) % 7 == 0:  # Monday
            svg.line(x, top - 4, x, top + ROW_H * len(page.clinics), stroke="#bbb")
            date = time.strftime("%d %b", time.gmtime(d * C.DAY_S))
            # a Monday too near the end (today) ends its date at the last column: from
            # the column on, it ran into the "exams" head beside the cells
            past = x + 1 + text_width(date, 10) > cells_end
            svg.text(cells_end if past else x + 1, top - 8, date, fill=MUTED, size=10,
                     anchor="end" if past else "start")
    today = page.period.last_day  # still under way: silent so far is not silent
    svg.text(label_w + (len(days) - 1) * cw + cw / 2, top - 20, "today", anchor="middle",
             fill=MUTED, size=10)
    for r, clinic in enumerate(page.clinics):
        y = top + r * ROW_H
        title = clinic_text(clinic, page.names.get(clinic, ""))
        for i, d in enumerate(days):
            c = page.cells[(clinic, d)]
            # weekends are expected to be quiet, today may not have begun at the clinic, and
            # before its first message the clinic had no box to hear from; after a stopped
            # collector's day nothing could be heard, today included
            before = page.before_first(clinic, d)
            unheard = c.silent and d >= unheard_from
            fill = (not_heard if unheard else "#fff" if d == today else
                    WEEKEND if (d + 3) % 7 >= 5 or before else GREY) if c.silent else \
                ("#fff" if c.exams == 0 else bin_colour(c.exams, EXAM_EDGES, BLUES))
            quiet = (NOT_HEARD if unheard else "today so far: no message yet" if d == today
                     else "before the clinic's first message" if before else
                     "silent, no message")
            tip = (f"{title} {Q.day_text(d)}: " +
                   (quiet if c.silent else
                    f"{plural(c.exams, 'exam')}, {plural(c.health, 'health message')}") +
                   (f"; {plural(c.withdrawn, 'exam')} withdrawn by the midwife"
                    if c.withdrawn else "") +
                   (f"; {plural(c.holes, 'sequence hole')}" if c.holes else "") +
                   (f", {plural(c.missing, 'message')} missing" if c.missing else ""))
            svg.rect(label_w + i * cw + 0.5, y + 0.5, cw - 1, ROW_H - 1, fill, tip=tip,
                     stroke="#ccc" if fill == "#fff" or unheard else None,
                     stroke_dasharray="2 2" if c.silent and d == today and not unheard
                     else None,
                     data_clinic=clinic, data_day=Q.day_text(d), data_exams=c.exams,
                     data_silent=int(c.silent), data_holes=c.holes,
                     data_not_heard=1 if unheard else None)
            if c.holes:
                svg.circle(label_w + i * cw + cw / 2, y + ROW_H / 2, 2.6, ORANGE,
                           stroke="#fff")
        _clinic_totals(svg, page, clinic, label_w + len(days) * cw + TOTALS_GAP,
                       y + ROW_H - 3)
    y = top + ROW_H * len(page.clinics) + 22
    x = legend(svg, label_w, y, keys)
    svg.circle(x + 4, y - 4, 3, ORANGE)
    svg.text(x + HOLE_KEY_W, y, hole_words, fill=MUTED)
    if not_heard:
        legend(svg, label_w, y + 18, [(not_heard, NOT_HEARD)])
    return svg.done()


def clinics_weeks_svg(page: Q.ClinicsPage) -> str:
    """A cell per clinic and week, coloured by its exams, the share of its weekdays that
    were silent drawn grey from the bottom up (all grey: not a message all week). The cells
    are one path per colour; each row carries its numbers (``data-week-*``, one per week) and
    its words (a hover title over the row; the table under the plot lists every clinic's
    silent spells)."""
    weeks = list(range(page.period.first_week, page.period.last_week + 1))
    cw = max(6, min(ROW_H, 780 // len(weeks)))
    keys = [("#fff", "0 exams a week"), (BLUES[1], "1-14"), (BLUES[2], "15-24"),
            (BLUES[3], "25-39"), (BLUES[4], "40+")]
    keys2 = [(GREY, "share of the weekdays silent"), (WEEKEND, "before the first message")]
    hole_words = "a hole in a box's message sequence that week"
    by = Q.clinic_weeks(page)
    # a week that began after a stopped collector's day: nothing could be heard in it
    unheard = {(c, w) for c in page.clinics for w in weeks
               if page.quiet_day is not None and w * 7 - 3 >= page.quiet_day
               and not by[(c, w)].heard}
    svg, (label_w, top) = _clinics_frame(
        page, cw, len(weeks), "Exams per week per clinic, silent weekdays and sequence holes",
        max(legend_width(keys), legend_width(keys2) + HOLE_KEY_W + text_width(hole_words)),
        extra_h=36 if unheard else 18, data_first_week=Q.week_text(weeks[0]))
    not_heard = svg.hatch("not-heard", C.NOT_HEARD_HATCH) if unheard else None
    step = -(-56 // cw)  # a date label every ~56 px, from the latest week back, which is
    for i in range(len(weeks) - 1 - step, -1, -step):  # "this week"
        x = label_w + i * cw
        svg.line(x, top - 4, x, top + ROW_H * len(page.clinics), stroke="#bbb")
        svg.text(x + 1, top - 8, time.strftime("%d %b %y", time.gmtime(
            (weeks[i] * 7 - 3) * C.DAY_S)), fill=MUTED, size=10)
    svg.text(label_w + len(weeks) * cw, top - 20, "this week so far", anchor="end",
             fill=MUTED, size=10)
    fills: dict[str, list] = {c: [] for c in (WEEKEND, "#fff", *BLUES[1:], GREY)}
    if not_heard:
        fills[not_heard] = []
    holes: list[tuple[float, float]] = []
    rows = []
    for r, clinic in enumerate(page.clinics):
        y = top + r * ROW_H + 0.5
        for i, week in enumerate(weeks):
            w, x = by[(clinic, week)], label_w + i * cw + 0.5
            if (clinic, week) in unheard:
                fills[not_heard].append((x, y, cw - 1, ROW_H - 1))
            elif w.before_first and not w.heard:
                fills[WEEKEND].append((x, y, cw - 1, ROW_H - 1))
            elif w.counted and w.silent == w.counted and not w.heard:
                fills[GREY].append((x, y, cw - 1, ROW_H - 1))
            else:
                base = "#fff" if w.exams == 0 else bin_colour(w.exams, WEEK_EXAM_EDGES, BLUES)
                fills[base].append((x, y, cw - 1, ROW_H - 1))
                if w.silent:
                    h = (ROW_H - 1) * w.silent / w.counted
                    fills[GREY].append((x, y + ROW_H - 1 - h, cw - 1, h))
            if w.holes:
                holes.append((x - 0.5 + cw / 2, y - 0.5 + ROW_H / 2))
        rows.append((clinic, y))
        _clinic_totals(svg, page, clinic, label_w + len(weeks) * cw + TOTALS_GAP,
                       y - 0.5 + ROW_H - 3)
    for colour, boxes in fills.items():
        svg.rects(boxes, colour, stroke="#ccc" if colour in ("#fff", not_heard) else None)
    svg.dots(holes, min(2.6, cw / 2 - 0.5), ORANGE, stroke="#fff" if cw > 8 else None)
    for clinic, y in rows:  # over the cells: the row's words where the pointer is
        ws = [by[(clinic, week)] for week in weeks]
        svg.rect(label_w, y - 0.5, cw * len(weeks), ROW_H, "#fff",
                 tip=_row_words(page, clinic), fill_opacity=0, data_clinic=clinic,
                 data_week_exams=",".join(str(w.exams) for w in ws),
                 data_week_silent=",".join(str(w.silent) for w in ws),
                 data_week_missing=",".join(str(w.missing) for w in ws))
    y = top + ROW_H * len(page.clinics) + 22
    legend(svg, label_w, y, keys)
    x = legend(svg, label_w, y + 18, keys2)
    svg.circle(x + 4, y + 14, 3, ORANGE)
    svg.text(x + HOLE_KEY_W, y + 18, hole_words, fill=MUTED)
    if not_heard:
        legend(svg, label_w, y + 36, [(not_heard, NOT_HEARD)])
    return svg.done()


def _clinic_label(page: Q.ClinicsPage, clinic: str) -> str:
    """A clinic's name as the clinics plots draw it, cut to CLINIC_NAME_W."""
    return fit_width(page.names.get(clinic) or clinic, CLINIC_NAME_W)


def _clinics_frame(page: Q.ClinicsPage, cell_w: int, columns: int, title: str,
                   legend_w: float, extra_h: int = 0, **data) -> tuple[Svg, tuple[int, int]]:
    """The clinics plot's canvas and column heads; returns it with (label_w, top). The
    canvas is as wide as its columns and its legend (`legend_w`, drawn from label_w)."""
    name_w = math.ceil(max([text_width(_clinic_label(page, c)) for c in page.clinics] + [0]))
    label_w, top = name_w + 2 * NAME_GAP, 34
    # totals, then the clinic again: a phone opens the plot at its latest end
    right = TOTALS_GAP + TOTALS_NAME_X + name_w + NAME_END
    svg = Svg(max(label_w + cell_w * columns + right, label_w + math.ceil(legend_w)),
              top + ROW_H * max(1, len(page.clinics)) + 44 + extra_h, title, "clinics", **data)
    x = label_w + columns * cell_w + TOTALS_GAP
    for dx, dy, head in ((TOTALS_RIGHT[0], 8, "exams"), (TOTALS_RIGHT[1], 20, "silent"),
                         (TOTALS_RIGHT[1], 8, "weekdays"), (TOTALS_RIGHT[2], 20, "messages"),
                         (TOTALS_RIGHT[2], 8, "missing")):
        svg.text(x + dx, top - dy, head, anchor="end", fill=MUTED, size=10)
    for r, clinic in enumerate(page.clinics):
        svg.text(label_w - NAME_GAP, top + r * ROW_H + ROW_H - 3, _clinic_label(page, clinic),
                 anchor="end", tip=clinic_text(clinic, page.names.get(clinic, "")),
                 href=clinic_href(clinic, page.period.weeks))
    return svg, (label_w, top)


def _clinic_totals(svg: Svg, page: Q.ClinicsPage, clinic: str, x: float, y: float) -> None:
    """A row's exams, silent weekdays and messages missing, then the clinic again."""
    exams, silent, missing = page.totals(clinic)
    svg.text(x + TOTALS_RIGHT[0], y, exams, anchor="end", data_total=clinic)
    svg.text(x + TOTALS_RIGHT[1], y, silent or "", anchor="end",
             fill=ORANGE if silent >= 3 else MUTED, data_silent_weekdays=clinic)
    svg.text(x + TOTALS_RIGHT[2], y, missing or "", anchor="end", fill=ORANGE)
    svg.text(x + TOTALS_NAME_X, y, _clinic_label(page, clinic),
             tip=clinic_text(clinic, page.names.get(clinic, "")),
             href=clinic_href(clinic, page.period.weeks))


def spell_text(s: Q.SilentSpell) -> str:
    n = plural(s.weekdays, "weekday")
    if s.since_day is not None:  # begun before the period: its start, the period's count
        return (f"since {Q.day_text(s.since_day)} ({n} in this period, still silent)"
                if s.ongoing else
                f"{Q.day_text(s.since_day)} to {Q.day_text(s.last_day)} ({n} in this period)")
    if s.ongoing:
        return f"since {Q.day_text(s.first_day)} ({n}, still silent)"
    if s.first_day == s.last_day:
        return f"{Q.day_text(s.first_day)} (1 weekday)"
    return f"{Q.day_text(s.first_day)} to {Q.day_text(s.last_day)} ({n})"


def long_spells(page: Q.ClinicsPage, clinic: str) -> list[Q.SilentSpell]:
    """The spells worth a line: SILENT_SPELL_WEEKDAYS weekdays or more, latest first."""
    return [s for s in reversed(page.silent_spells(clinic))
            if s.weekdays >= C.SILENT_SPELL_WEEKDAYS]


def _row_words(page: Q.ClinicsPage, clinic: str) -> str:
    exams, silent, missing = page.totals(clinic)
    spells = long_spells(page, clinic)
    withdrawn = page.withdrawn(clinic)
    words = (f"{clinic_text(clinic, page.names.get(clinic, ''))}: {plural(exams, 'exam')}"
             + (f" (and {plural(withdrawn, 'exam')} withdrawn by the midwife)"
                if withdrawn else "")
             + f", {plural(silent, 'silent weekday')}")
    if spells:
        words += "; silent " + "; ".join(spell_text(s) for s in spells[:3])
        words += f" and {len(spells) - 3} more" if len(spells) > 3 else ""
    return words + (f"; {plural(missing, 'message')} missing" if missing else "")


def withdrawn_cell(withdrawn: int, exams: int) -> str:
    """A clinic's withdrawn exams and their share of all it ended, withdrawn or not ("12
    (25% of 48)"): a clinic withdrawing a third of its exams stands out beside the rest.
    A share that rounds to 0% is "under 1%": "1 (0% of 225)" read as none withdrawn."""
    if not withdrawn:
        return "0"
    shown = pct(withdrawn / (exams + withdrawn))
    return f"{withdrawn} ({'under 1%' if shown == '0%' else shown} of {exams + withdrawn})"


def silent_table(page: Q.ClinicsPage) -> str:
    """Every clinic's totals and its silent spells in words: what the plot shows, for a
    screen reader, a printout, or a phone that cannot take the plot in at once."""
    head = ("<tr><th>clinic</th><th>exams</th>"
            # a word as the other heads, the whole in its title: on a phone the sentence
            # wrapped to six lines (a walk)
            f'<th title="{WITHDRAWN_WORDS[:1].upper()}{WITHDRAWN_WORDS[1:]} (in no other '
            'figure)">withdrawn</th>'
            "<th>silent weekdays</th>"
            f"<th>silent {C.SILENT_SPELL_WEEKDAYS} weekdays or more in a row, latest first"
            "</th><th>messages missing</th><th>heads refused by the box's set-up</th></tr>")
    body = []
    for clinic in page.clinics:
        exams, silent, missing = page.totals(clinic)
        withdrawn = page.withdrawn(clinic)
        spells = long_spells(page, clinic)
        shown = [f'<span data-spell="{s.first_day},{s.last_day},{s.weekdays}">'
                 f"{esc(spell_text(s))}</span>" for s in spells[:C.SPELLS_SHOWN]]
        if len(spells) > C.SPELLS_SHOWN:
            shown.append(f"and {len(spells) - C.SPELLS_SHOWN} earlier")
        never = page.first_day is not None and clinic not in page.first_day
        body.append(f'<tr data-clinic="{esc(clinic)}"><td>'
                    f"{clinic_html(clinic, page.names.get(clinic, ''), page.period.weeks)}</td>"
                    f'<td class="num">{exams}</td>'
                    f'<td class="num withdrawn" data-withdrawn="{withdrawn}">'
                    f"{withdrawn_cell(withdrawn, exams)}</td>"
                    f'<td class="num">{silent}</td>'
                    f"<td>{'<br>'.join(shown) or ('no message ever' if never else '-')}</td>"
                    f'<td class="num">{missing}</td>'
                    f'<td class="setup">{setup_fault_html(page.setup_faults(clinic))}</td></tr>')
    if not body:
        body.append('<tr><td colspan="7" class="muted">no clinics in this scope</td></tr>')
    return f'<div class="wide"><table class="silent">{head}{"".join(body)}</table></div>'


def setup_fault_html(texts: list[str]) -> str:
    """`Q.setup_fault_texts` as a table cell says them, a line each ("-": none)."""
    return "<br>".join(f'<span class="setup-fault">{esc(t[:1].upper() + t[1:])}.</span>'
                       for t in texts) or "-"


# A clinic's name in a CSV comes after the columns it had, clinic_name (empty when the
# district map gives none), and columns added since after it, so that a script reading the
# columns by position reads what it read before.
def clinics_csv(page: Q.ClinicsPage) -> str:
    """A row per clinic and day. `silent`: no message that day; `silent_weekday`: a silent
    day the page counts (a weekday, not today, not before the clinic's first message:
    ClinicsPage.counts), so that the CSV adds up to the page's silent weekdays.
    `exams_withdrawn`: the day's exams the midwife withdrew, in no other column (the last
    but the district, as every column added)."""
    return to_csv(["clinic_id", "day", "exams", "health", "silent", "sequence_holes",
                   "messages_missing", "clinic_name", "silent_weekday",
                   "before_first_message", "exams_heads_refused_setup", "exams_withdrawn"],
                  [[c.clinic_id, Q.day_text(c.day), c.exams, c.health, int(c.silent), c.holes,
                    c.missing, page.names.get(c.clinic_id, ""),
                    int(page.silent_weekday(c.clinic_id, c.day)),
                    int(page.before_first(c.clinic_id, c.day)), c.setup_refused, c.withdrawn]
                   for c in page.rows()])


# -- the monthly return ----------------------------------------------------------------------
MONTHLY_COLUMNS = ["month", "clinic_id", "clinic_name", "protocol", "protocol_title",
                   "exams", "complete", "complete_share", "hc_measured", "dates_small",
                   "dates_large", "exam_days", "heard_days", "days_counted",
                   "complete_month", "first_heard_day"]


def monthly_values(r: Q.MonthlyRow, month: Q.Month) -> list:
    """A monthly return's row (MONTHLY_COLUMNS): the CSV's, and the clinic page's month
    table's data-* (one source, so that the two cannot disagree)."""
    return [month.text, r.clinic_id, r.clinic_name, r.protocol,
            C.protocol_title(r.protocol) if r.protocol else "", r.exams, r.complete,
            round(r.complete / r.exams, 4) if r.exams else None, r.hc_measured,
            r.dates_small, r.dates_large, r.exam_days, r.heard_days, r.days_counted,
            int(r.complete_month),
            None if r.first_heard_day is None else Q.day_text(r.first_heard_day)]


def monthly_csv(rows: list[Q.MonthlyRow], month: Q.Month) -> str:
    """A row per clinic and protocol over one calendar month, every clinic of the scope
    (one with no exam has a row of zeros and no protocol). `days_counted`: the clinic's
    days of the month up to today, from its first message on (before it its box was not
    set up: no days of zero exams); `complete_month` 1 only when that is every day of the
    month. `first_heard_day` (last, so that scripts reading the columns by position read
    them as before): the clinic's first message, "" if it never sent one."""
    return to_csv(MONTHLY_COLUMNS, [monthly_values(r, month) for r in rows])


def month_table(page: Q.ClinicPage, district: str | None) -> str:
    """The clinic's page's "this month so far": its rows of this month's monthly return
    (`page.month_rows`, `Q.monthly_return` as the CSV has them), a row per protocol, each
    row's CSV values in data-* (MONTHLY_COLUMNS); the return's link under it. An officer
    asked for a clinic's month had to download the district's CSV and find its rows."""
    month = page.month
    if month is None:
        return ""
    where = f"&district={district}" if district else ""
    link = (f'<p class="csv"><a href="/api/monthly.csv?month={month.text}{esc(where)}" '
            f"download>The district's monthly return, {esc(month.title)} to date "
            "(CSV)</a></p>")
    if not page.month_rows:
        return f'<p class="lead">Nothing this month: no box of the clinic was heard.</p>{link}'
    first = page.month_rows[0]
    counted = (f"{plural(first.days_counted, 'day')} counted (from "
               f"{Q.day_text(max(month.first_day, first.first_heard_day))})"
               if first.first_heard_day is not None else "no day counted: never heard")
    body = []
    for r in page.month_rows:
        data = " ".join(f'data-{k.replace("_", "-")}="{esc("" if v is None else str(v))}"'
                        for k, v in zip(MONTHLY_COLUMNS, monthly_values(r, month),
                                        strict=True))
        name = esc(C.protocol_title(r.protocol)) if r.protocol else "no exams"
        share = f"{pct(r.complete / r.exams)} ({r.complete} of {r.exams})" if r.exams else "-"
        body.append(f"<tr {data}><td>{name}</td><td class=num>{r.exams}</td>"
                    f"<td class=num>{share}</td><td class=num>{r.hc_measured}</td>"
                    f"<td class=num>{r.dates_small}</td><td class=num>{r.dates_large}</td>"
                    f"<td class=num>{r.exam_days}</td></tr>")
    return (f'<p class="lead">{esc(month.title)} from its first day to '
            f"{esc(Q.day_text(page.month_last_day))} (UTC days), as the monthly return "
            f"counts it: its boxes heard on {plural(first.heard_days, 'day')} of "
            f"{esc(counted)}; exams count on the day they ended on the box.</p>"
            '<div class="wide"><table class="month"><tr><th>protocol</th><th>exams</th>'
            "<th>complete</th><th>head measured</th><th>head small for the dates</th>"
            "<th>head large for the dates</th><th>days with exams</th></tr>"
            f"{''.join(body)}</table></div>{link}")


def monthly_links(months: list[Q.Month], district: str | None) -> str:
    """The monthly returns the clinics page offers, this month so far first: those not
    wholly before the scope's first message (`Q.months_returned`), none if it has none."""
    where = f"&district={district}" if district else ""
    this = Q.this_month()
    links = " · ".join(
        f'<a href="/api/monthly.csv?month={m.text}{esc(where)}" download>'
        f"{esc(m.title)}{' (to date)' if m == this else ''}</a>" for m in months)
    return (f'<p class="lead">Each clinic\'s exams per protocol over a calendar month '
            "(UTC days), with how many were complete, had the head measured, or a head "
            "small or large for the age by dates, and on how many days its boxes were "
            "heard: the figures of a monthly report. Every clinic has a row, one without "
            "exams a row of zeros; its days count from its first message on (a box not "
            "yet set up had no days of zero exams), and a month it was set up in is not "
            "a complete month. Older months: <code>?month=YYYY-MM</code>, back to the "
            "first message.</p>"
            f'<p class="csv">Monthly return (CSV): '
            f"{links or 'none yet: no box here has sent anything'}</p>")


# -- completeness ----------------------------------------------------------------------------
def completeness_svg(page: Q.CompletenessPage, protocol: str) -> str:
    """One protocol's share of complete exams per clinic, least complete first: a head
    measurement of one slot and a screen of 13 are complete at rates too far apart to
    share a bar."""
    rows = []
    for c in page.clinics_of(protocol):
        exams, complete = c.protocols[protocol]
        share = c.protocol_share(protocol)
        rows.append({"label": fit(c.name or c.clinic_id, 26),
                     "title": clinic_text(c.clinic_id, c.name), "value": share,
                     "href": clinic_href(c.clinic_id, page.period.weeks),
                     "note": share_of(share, exams),
                     "colour": ORANGE if share is not None and share < 0.5 else BLUES[3],
                     "data": {"data_clinic": c.clinic_id, "data_protocol": protocol,
                              "data_complete": complete, "data_exams": exams}})
    return hbars(f"Share of {C.protocol_title(protocol)} exams that captured every slot, "
                 "per clinic", "completeness", rows)


# How a slot's misses split, as the clinic page says it: (kind, colour, the legend's words,
# what to coach). What no summary said (older boxes, or shed to fit 1 KB) is the bar's own
# grey, never guessed into either.
MISSED_KINDS = [("not_found", BLUES[4], "not found", "coach where to look"),
                ("not_clear_enough", BLUES[2], "found, not clear enough",
                 "coach the image: gain, depth, zoom, a steady hand")]
MISSED_NOT_SAID = "not said (older boxes)"
# The words above each: what the two kinds mean and what to coach for each
MISSED_KINDS_LEAD = (
    "Not found: no frame of the slot's planes was seen, so coach where to look. Found, not "
    "clear enough: the slot was seen, never at the quality the checklist takes, so coach "
    "the image (gain, depth, zoom, a steady hand). Not said: exams from boxes that did not "
    "yet tell.")


def missed_svg(page: Q.CompletenessPage) -> str:
    """The slots most often missed, a bar each by its share of the protocol's exams, split
    into the misses never found, found but not clear enough, and not said, with the split
    in words under it: what to coach, where to look or the image."""
    rows = []
    for s in page.slots[:20]:
        where = f"{s.slot} ({C.protocol_title(s.protocol)})"
        parts = [(n / s.missed if s.missed else 0.0, colour,
                  f"{where}: {n} of {plural(s.missed, 'miss', 'misses')} {words}: {coach}",
                  {"data_kind": kind, "data_n": n})
                 for n, (kind, colour, words, coach) in zip((s.not_found, s.poor),
                                                            MISSED_KINDS, strict=True)]
        rows.append({"label": f"{s.slot} ({s.protocol})", "value": s.share, "colour": GREY,
                     "note": f"{pct(s.share)}: {s.missed} of {plural(s.exams, 'exam')}",
                     "title": where, "parts": parts, "sub": slot_missed_kinds(s),
                     "data": {"data_protocol": s.protocol, "data_slot": s.slot,
                              "data_missed": s.missed, "data_exams": s.exams,
                              "data_not_found": s.not_found, "data_not_clear_enough": s.poor,
                              "data_not_said": s.unknown}})
    keys = [(colour, words) for _, colour, words, _ in MISSED_KINDS]
    return hbars("Checklist slots most often missed (share of the protocol's exams), "
                 "never found, found but not clear enough, or not said", "missed", rows,
                 label_w=230, keys=[*keys, (GREY, MISSED_NOT_SAID)] if rows else None)


def slot_missed_text(s: Q.SlotMissed) -> str:
    """ "3VV 35% (19 of 55)": a slot, and the share of the clinic's exams of its protocol
    that missed it (each of them required it)."""
    return f"{s.slot} {pct(s.share)} ({s.missed} of {s.exams})"


def slot_missed_kinds(s: Q.SlotMissed) -> str:
    """ "12 not found, 7 found but not clear enough": how a slot's misses split, what to
    coach (where to look, or the image: gain, depth, zoom, steadiness); the misses of
    exams that do not say (boxes before they did) last, as "not said"; where none said,
    that alone (never "0 not found", a guess that all were found)."""
    if s.unknown >= s.missed:
        return f"{s.unknown} not said (older boxes)"
    parts = [f"{s.not_found} not found", f"{s.poor} found but not clear enough"]
    if s.unknown:
        parts.append(f"{s.unknown} not said (older boxes)")
    return ", ".join(parts)


def missed_kinds_table(page: Q.CompletenessPage) -> str:
    """A row per slot missed (the district's order, `page.slots`): its misses, of them
    never found, found but never good enough, and those that do not say."""
    if not page.slots:
        return '<p class="lead">No slot missed in this period.</p>'
    rows = "".join(
        f"<tr><td>{esc(s.slot)} ({esc(C.protocol_title(s.protocol))})</td>"
        f"<td class=num>{pct(s.share)} ({s.missed} of {s.exams})</td>"
        f"<td class=num>{s.not_found}</td><td class=num>{s.poor}</td>"
        f"<td class=num>{s.unknown or '-'}</td></tr>" for s in page.slots)
    return ('<div class="wide"><table class="missed-kinds"><tr><th>slot</th>'
            "<th>missed (share of the protocol's exams)</th><th>not found</th>"
            "<th>found, not clear enough</th><th>not said (older boxes)</th></tr>"
            f"{rows}</table></div>")


def protocol_cell(c: Q.ClinicCompleteness, protocol: str) -> str:
    exams, _ = c.protocols.get(protocol, (0, 0))
    if not exams:
        return "<td class=num>-</td>"
    return f"<td class=num>{share_of(c.protocol_share(protocol), exams)}</td>"


def completeness_table(page: Q.CompletenessPage, missed_shown: int = 3) -> str:
    """A row per clinic in the page's order (its lowest share in any column first), a
    column per protocol charted, and the `missed_shown` slots it missed most, by their share
    of its exams of their protocol (a raw count ranked a head measurement's one slot, which
    every head exam requires, over a screen's planes)."""
    shown = [p.protocol for p in page.shown]
    head = "".join(f"<th>{esc(C.protocol_title(p))}</th>" for p in shown)
    rows = "".join(
        f"<tr><td>{clinic_html(c.clinic_id, c.name, page.period.weeks)}</td>"
        + "".join(protocol_cell(c, p) for p in shown) + "<td>"
        + (", ".join(f'<span title="{esc(C.protocol_title(s.protocol))}: '
                     f'{esc(slot_missed_kinds(s))}">{esc(slot_missed_text(s))}</span>'
                     for s in c.slots_missed()[:missed_shown]) or "-")
        + "</td></tr>" for c in page.clinics)
    return ('<div class="wide"><table class="missed"><tr><th>clinic</th>'
            f"{head}<th>missed most (share of the protocol's exams)</th></tr>{rows}"
            "</table></div>")


def completeness_csv(page: Q.CompletenessPage) -> str:
    """A row per clinic, every protocol together (as before), in the page's order; the
    last columns say what ranks it: its least complete protocol charted and that share."""
    shown = [p.protocol for p in page.shown]
    rows = []
    for c in page.clinics:
        least = c.least_complete(shown)
        worst = least[0][2] if least else ""
        rows.append([c.clinic_id, c.exams, c.with_protocol, c.complete,
                     "" if c.share is None else round(c.share, 4), c.name, worst,
                     round(c.protocol_share(worst) or 0.0, 4) if worst else ""])
    return to_csv(["clinic_id", "exams", "exams_with_protocol", "complete", "share_complete",
                   "clinic_name", "least_complete_protocol", "least_complete_share"], rows)


def completeness_protocols_csv(page: Q.CompletenessPage) -> str:
    """A row per clinic and protocol: the page's charts, every protocol."""
    return to_csv(["clinic_id", "protocol", "exams", "complete", "share_complete",
                   "clinic_name"],
                  [[c.clinic_id, protocol, exams, complete, round(complete / exams, 4), c.name]
                   for c in sorted(page.clinics, key=lambda c: c.clinic_id)
                   for protocol, (exams, complete) in sorted(c.protocols.items()) if exams])


def missed_csv(page: Q.CompletenessPage) -> str:
    """A row per clinic and slot missed, the clinics in the table's order, each one's slots
    by protocol and name; the last two columns, the clinic's exams of that protocol (each
    required the slot) and the share of them that missed it (what ranks it in the table);
    then how many of the misses never found the slot, found it but never good enough, and
    do not say (older boxes: `Q.SlotMissed.unknown`)."""
    rows = [[c.clinic_id, s.protocol, s.slot, s.missed, s.exams, round(s.share, 4),
             s.not_found, s.poor, s.unknown]
            for c in page.clinics
            for s in sorted(c.slots_missed(), key=lambda s: (s.protocol, s.slot))]
    return to_csv(["clinic_id", "protocol", "slot", "exams_missing_it", "protocol_exams",
                   "share_missing_it", "missed_not_found", "missed_not_clear_enough",
                   "missed_not_said"], rows)


# -- quality ---------------------------------------------------------------------------------
WEEK_LABEL_W = 64  # px a week's date ("2026-10-12") takes at the 10 px font, and a gap


# The heatmap's scale: the share of a cell's exams whose best frame of the plane scored under
# C.MIN_QUALITY (found, not captured). A mean of best frames hid them: over 8 weeks the
# seeded district's 104 cells took two blues while 5-15% of each clinic's best frames were
# not captured. The classes are 5 points wide where the district's cells lie (most 5-20%).
# Only a cell clearly above the district's share (Q.above_chance, a funnel plot's limits)
# takes its orange; the rest, whatever their share, one muted grey: at 20 exams a true 12%
# reaches 20% by chance in a cell in five, and an orange scale sent the officer to them.
FAILED_EDGES = [0.05, 0.1, 0.15, 0.2, 0.3]
FAILED_COLOURS = ORANGES  # one colour per class: under the first edge ... from the last
WHITE_ON = ORANGES[4:]  # the two darkest: a cell's share is written on them in white
WITHIN_CHANCE = "#ebebeb"  # muted: a share chance at the district's own rate explains
TOO_FEW = f"fewer than {C.QUALITY_CELL_MIN_EXAMS} exams: too few to judge"
NOT_FOUND = "blank: no exam found the plane"
TOO_FEW_INK = "#bdbdbd"  # a light hatch: it recedes behind the cells that can be judged


def confidence_text() -> str:
    """C.QUALITY_FUNNEL_CONFIDENCE as the pages say it: "95%"."""
    return f"{C.QUALITY_FUNNEL_CONFIDENCE * 100:g}%"


def interval_text(low_high: tuple[float, float]) -> str:
    """A share's interval as the titles give it: "95% interval 8-42%"."""
    low, high = low_high
    return f"{confidence_text()} interval {pct(low)[:-1]}-{pct(high)}"


def chance_words(above: bool, n: int, district_share: float,
                 against: str = "the district's") -> str:
    """Whether a share of `n` is beyond chance, against the district's (QualityPage.against),
    in words."""
    if n < C.QUALITY_CELL_MIN_EXAMS:
        return f"too few to judge (under {C.QUALITY_CELL_MIN_EXAMS})"
    return (f"clearly above {against} {pct(district_share)}" if above else
            f"within chance of {against} {pct(district_share)}")


def funnel_rule(page: Q.QualityPage) -> str:
    """The rule in one line, as the quality page says it above its heatmap."""
    return (f"Orange only where a share is clearly above {page.against} own "
            f"{pct(page.district_share)} (its {confidence_text()} Wilson interval wholly "
            f"above it, the limits of a funnel plot): a higher share that its number of exams "
            f"could show by chance is grey.")


def failed_keys() -> list[str]:
    """The scale's classes in words: "under 5%", "5-10%", ..., "30% or more"."""
    e = FAILED_EDGES
    return ([f"under {pct(e[0])}"]
            + [f"{a * 100:.0f}-{pct(b)}" for a, b in zip(e, e[1:], strict=False)]
            + [f"{pct(e[-1])} or more"])


def failed_keys_drawn(page: Q.QualityPage) -> list[tuple[str, str]]:
    """The scale's classes (colour, words) a cell of this page can take: orange needs the
    cell's whole interval above the district's share (Q.above_chance), so its share above
    it, and its class is that of its share as written (`failed_percent`): the classes whose
    every share lies at or under the district's can never be drawn, and a legend listing
    them ("under 5%" beside a district's 12%) promised an orange no cell could take. None
    where the district's share is 100%."""
    share = page.district_share
    if share >= 1.0:
        return []
    # the least a share above the district's is written as, rounded as a cell's is
    least = round(math.nextafter(share, 2.0) * 100)
    lowest = FAILED_COLOURS.index(bin_colour(least / 100, FAILED_EDGES, FAILED_COLOURS))
    return list(zip(FAILED_COLOURS, failed_keys(), strict=True))[lowest:]


def failed_percent(c: Q.PlaneWeek) -> int:
    """The cell's share in whole percent, as it is written: its colour is chosen from this,
    so a cell that says "20%" is never in the class under 20%."""
    return round(c.below_share * 100)


def failed_colour(c: Q.PlaneWeek) -> str:
    """Its class's orange where clearly above the district's share; else muted."""
    if not c.above:
        return WITHIN_CHANCE
    return bin_colour(failed_percent(c) / 100, FAILED_EDGES, FAILED_COLOURS)


def quality_cell_tip(c: Q.PlaneWeek, this_week: int | None = None,
                     against: str = "the district's") -> str:
    where = (f"{c.plane}, week of {Q.week_text(c.week)}"
             + (" (this week so far)" if c.week == this_week else ""))
    counts = (f"{c.below_capture} of {plural(c.exams, 'exam')} ({failed_percent(c)}%) under "
              f"{C.MIN_QUALITY}, not captured ({interval_text(c.interval)}); mean best-frame "
              f"quality {c.mean_quality:.2f}")
    if c.too_few:
        return (f"{where}: too few to judge (under {C.QUALITY_CELL_MIN_EXAMS} exams); "
                f"{counts}")
    return f"{where}: {chance_words(c.above, c.exams, c.district_share, against)}; {counts}"


def quality_svg(page: Q.QualityPage) -> str:
    """Per plane and week, the share of exams whose best frame of the plane was not
    captured, on a sequential orange; a cell with too few exams hatched, never orange."""
    # Eight weeks (the menu's period) had 22 px cells under 55 px dates, which ran into
    # one smear, and a 296 px drawing that cut its own legend off.
    cell_w = max(6, min(68, 720 // max(1, len(page.weeks))))
    cell_h, label_w, top = 18, 100, 30
    heading = (f"Share of exams with the plane's best frame under {C.MIN_QUALITY} "
               "(not captured):")
    keys = failed_keys_drawn(page)
    within = (f"any share within chance of {page.against} {pct(page.district_share)} "
              f"({confidence_text()})")
    step = -(-WEEK_LABEL_W // cell_w)  # a date every so many cells, never overlapping
    last_date = label_w + (max(0, len(page.weeks) - 1) // step * step) * cell_w
    width = max(label_w + cell_w * len(page.weeks) + 20, last_date + WEEK_LABEL_W,
                label_w + round(legend_width(keys, measured=True)) + 10,
                label_w + round(text_width(heading)) + 10,
                label_w + round(legend_width([("", within), ("", TOO_FEW), ("", NOT_FOUND)],
                                             measured=True)) + 10)
    height = top + cell_h * max(1, len(page.planes)) + 80
    svg = Svg(width, height, f"Share of exams with the best frame under {C.MIN_QUALITY}, "
              "per plane and week", "quality")
    too_few = svg.hatch("too-few", C.NOT_HEARD_HATCH, TOO_FEW_INK)
    col = {w: i for i, w in enumerate(page.weeks)}
    row = {p: i for i, p in enumerate(page.planes)}
    for w in page.weeks[::step]:
        svg.text(label_w + col[w] * cell_w, top - 8, Q.week_text(w), fill=MUTED, size=10)
    for p in page.planes:
        svg.text(label_w - 6, top + row[p] * cell_h + cell_h - 5, p, anchor="end")
    if not page.planes:
        svg.text(label_w, top + 14, "no exams in this period", fill=MUTED)
    # the share written in each cell where it fits (8 weeks): a print or a phone has no hover
    written = cell_w - 4 >= text_width("100%", 10)
    for c in page.cells:
        fill = too_few if c.too_few else failed_colour(c)
        x, y = label_w + col[c.week] * cell_w, top + row[c.plane] * cell_h
        svg.rect(x + 0.5, y + 0.5, cell_w - 1, cell_h - 1, fill,
                 tip=quality_cell_tip(c, page.period.last_week, page.against),
                 data_plane=c.plane, data_week=Q.week_text(c.week), data_exams=c.exams,
                 data_mean=f"{c.mean_quality:.4f}", data_below=c.below_capture,
                 data_share=f"{c.below_share:.4f}", data_too_few="" if c.too_few else None,
                 data_low=f"{c.interval[0]:.4f}", data_high=f"{c.interval[1]:.4f}",
                 data_above=1 if c.above else None)
        if written and not c.too_few:
            svg.text(x + cell_w / 2, y + cell_h - 5, f"{failed_percent(c)}%", anchor="middle",
                     size=10, fill="#fff" if fill in WHITE_ON else INK if c.above else MUTED,
                     pointer_events="none")
    y = top + cell_h * len(page.planes) + 24
    svg.text(label_w, y, heading, fill=MUTED)
    legend(svg, label_w, y + 18, keys, measured=True)
    legend(svg, label_w, y + 36, [(WITHIN_CHANCE, within), (too_few, TOO_FEW),
                                  ("#fff", NOT_FOUND)], measured=True)
    return svg.done()


def deficiencies_svg(page: Q.QualityPage) -> str:
    rows = []
    for d in page.deficiencies:
        share = d.exams / page.exams if page.exams else None
        other = d.name == C.DEFICIENCY_OTHER
        words = C.deficiency_words(d.name)
        rows.append({
            "label": C.DEFICIENCY_OTHER_LABEL if other else C.deficiency_label(d.name),
            "title": words if other else f"{words or d.name} (criterion {d.name})",
            "value": share or 0.0, "note": f"{pct(share)}: {plural(d.exams, 'exam')}",
            "data": {"data_name": d.name, "data_exams": d.exams}})
    top = max((r["value"] for r in rows), default=0.0)
    scale = next(s for s in (0.2, 0.4, 0.6, 0.8, 1.0) if top <= s)  # ticks at round numbers
    return hbars("Quality criteria failed most often (share of exams listing them)",
                 "deficiencies", rows, value_max=scale, label_w=220)


# The columns the funnel rule adds to a quality CSV, after those it had: the share's
# interval at C.QUALITY_FUNNEL_CONFIDENCE, whose share it is judged against ("district",
# or "all clinics" for an admin not filtering: beside a row's `district` column a
# "district_share" read as that district's, a walk), that share, and whether it is clearly
# above it (1: drawn orange, flagged)
FUNNEL_COLUMNS = ["interval_low", "interval_high", "compared_with", "compared_share",
                  "above_compared"]


def shading_words(page: Q.QualityPage) -> str:
    """What the heatmap's colour means, as drawn: "the darker, the more often" sat above a
    heatmap all grey, where no cell was beyond chance (a walk)."""
    if any(c.above for c in page.cells):
        return "The darker orange, the more often. "
    return "No cell is clearly above: all are grey. "


def _funnel_cells(x: Q.PlaneWeek | Q.ClinicQuality, page: Q.QualityPage) -> list:
    low, high = x.interval
    return [round(low, 4), round(high, 4),
            "district" if page.of_district else "all clinics",
            round(x.district_share, 4), int(x.above)]


def quality_csv(page: Q.QualityPage) -> str:
    """The heatmap's cells. Scripts read the first five columns by position: new ones go
    after them, the share the colour is drawn from and whether it was judged (1: fewer than
    C.QUALITY_CELL_MIN_EXAMS exams, drawn "too few to judge"), then FUNNEL_COLUMNS."""
    return to_csv(["plane", "week_starting", "exams", "mean_best_quality",
                   f"exams_below_{C.MIN_QUALITY}", f"share_below_{C.MIN_QUALITY}",
                   "too_few_to_judge", *FUNNEL_COLUMNS],
                  [[c.plane, Q.week_text(c.week), c.exams, round(c.mean_quality, 4),
                    c.below_capture, round(c.below_share, 4), int(c.too_few),
                    *_funnel_cells(c, page)]
                   for c in page.cells])


def quality_clinics_csv(page: Q.QualityPage) -> str:
    """A row per clinic: its best frames over the period, every plane; FUNNEL_COLUMNS after
    its name."""
    return to_csv(["clinic_id", "best_frames", "mean_best_quality",
                   f"best_frames_below_{C.MIN_QUALITY}", "worst_plane",
                   f"worst_plane_below_{C.MIN_QUALITY}", "worst_plane_best_frames",
                   "clinic_name", *FUNNEL_COLUMNS],
                  [[c.clinic_id, c.best_frames, round(c.mean_quality, 4), c.below_capture,
                    c.worst_plane if c.worst_below else "", c.worst_below,
                    c.worst_frames if c.worst_below else "", c.name, *_funnel_cells(c, page)]
                   for c in page.clinics])


def quality_clinics_table(page: Q.QualityPage) -> str:
    """The clinics clearly above the district's share first, then the others, each by
    share, worst first; a share's interval and judgement in its cell's title."""
    if not page.clinics:
        return '<p class="lead">No best frames in this period.</p>'
    rows = "".join(
        f"<tr{' class=flag' if c.above else ''}>"
        f"<td>{clinic_html(c.clinic_id, c.name, page.period.weeks)}</td>"
        f"<td class=num>{c.best_frames}</td>"
        f"<td class=num>{c.mean_quality:.2f}</td>"
        f'<td class=num title="{esc(interval_text(c.interval))}: '
        f'{esc(chance_words(c.above, c.best_frames, c.district_share, page.against))}">'
        f"{pct(c.below_share)} ({c.below_capture})</td>"
        + (f"<td>{esc(c.worst_plane)}: {c.worst_below} of {c.worst_frames}</td></tr>"
           if c.worst_below else "<td>-</td></tr>")
        for c in page.clinics)
    return ('<div class="wide"><table class="quality-clinics"><tr><th>clinic</th>'
            "<th>best frames</th><th>mean quality</th>"
            f"<th>under {C.MIN_QUALITY} (not captured)</th>"
            f"<th>plane most often under {C.MIN_QUALITY} (share of its best frames; "
            f"planes found {C.QUALITY_PLANE_MIN_FRAMES} times or more first)</th></tr>"
            f"{rows}</table></div>")


def deficiencies_csv(page: Q.QualityPage) -> str:
    return to_csv(["criterion", "exams_listing_it", "frames_failing", "exams_in_period",
                   "words"],
                  [[d.name, d.exams, d.frames, page.exams, C.deficiency_words(d.name)]
                   for d in page.deficiencies])


# -- biometry --------------------------------------------------------------------------------
GA_MAX, HC_MAX = 43.0, 400.0
GA_MIN, HC_MIN, GA_BIN, HC_BIN = Q.GA_MIN, Q.HC_MIN, Q.GA_BIN, Q.HC_BIN


def biometry_svg(page: Q.BiometryPage) -> str:
    width, height = 760, 470
    left, right, top, bottom = 56, 150, 16, 44
    pw, ph = width - left - right, height - top - bottom

    def x(ga: float) -> float:
        return left + (ga - GA_MIN) / (GA_MAX - GA_MIN) * pw

    def y(hc: float) -> float:
        return top + ph - (hc - HC_MIN) / (HC_MAX - HC_MIN) * ph

    svg = Svg(width, height, "Head circumference against gestational age, over "
              "INTERGROWTH-21st", "biometry")
    for ga in range(14, 43, 2):
        svg.line(x(ga), top, x(ga), top + ph, stroke="#eee")
        svg.text(x(ga), top + ph + 14, ga, anchor="middle", fill=MUTED)
    for hc in range(50, 401, 50):
        svg.line(left, y(hc), left + pw, y(hc), stroke="#eee")
        svg.text(left - 6, y(hc) + 4, hc, anchor="end", fill=MUTED)
    svg.text(left + pw / 2, height - 8, "gestational age (weeks)", anchor="middle")
    svg.add(f'<text x="16" y="{top + ph / 2:.0f}" text-anchor="middle" '
            f'transform="rotate(-90 16 {top + ph / 2:.0f})">head circumference (mm)</text>')
    ig = [R.IG_MIN_WEEKS + 0.25 * i for i in range(int((R.IG_MAX_WEEKS - R.IG_MIN_WEEKS) * 4)
                                                   + 1)]
    band = [(x(g), y(R.ig_hc_centile(g, 97))) for g in ig] + \
        [(x(g), y(R.ig_hc_centile(g, 3))) for g in reversed(ig)]
    svg.polygon(band, "#c7e9c0", 0.7, data_band="3-97")
    under = len(svg.parts)
    for cen, dash in ((3, None), (10, "3 3"), (50, None), (90, "3 3"), (97, None)):
        svg.polyline([(x(g), y(R.ig_hc_centile(g, cen))) for g in ig], "#31a354",
                     width=1.6 if cen == 50 else 1, dash=dash, data_centile=cen)
        if cen in (3, 50, 97):  # 10th and 90th are dashed; their labels would overlap
            svg.text(x(R.IG_MAX_WEEKS) + 4, y(R.ig_hc_centile(R.IG_MAX_WEEKS, cen)) + 4,
                     f"{cen}th" if cen != 3 else "3rd", fill="#31a354", size=10)
    hd = [HADLOCK_1984_WEEKS[0] + 0.5 * i for i in range(57)]
    svg.polyline([(x(g), y(hadlock_hc_mm(g))) for g in hd], INK, width=1.2, dash="6 3",
                 data_curve="hadlock")
    # the density of every measured exam with an age, then the outliers on top
    shown = [(gi, hi, n) for gi, hi, n in page.bins
             if GA_MIN <= GA_MIN + gi * GA_BIN < GA_MAX and HC_MIN <= HC_MIN + hi * HC_BIN < HC_MAX]
    top_n = max((n for *_, n in shown), default=1)
    first = len(svg.parts)
    for gi, hi, n in sorted(shown):
        g0, h0 = GA_MIN + gi * GA_BIN, HC_MIN + hi * HC_BIN
        fill = BLUES[min(4, 1 + int(n / top_n * 4))]
        svg.rect(x(g0), y(h0 + HC_BIN), x(g0 + GA_BIN) - x(g0), y(h0) - y(h0 + HC_BIN), fill,
                 tip=f"{plural(n, 'exam')} at {g0:g}-{g0 + GA_BIN:g} weeks, "
                     f"HC {h0:g}-{h0 + HC_BIN:g} mm",
                 data_ga=f"{g0:g}", data_hc=f"{h0:g}", data_n=n)
    cells = svg.parts[first:]  # under the reference lines, which must stay visible
    del svg.parts[first:]
    svg.parts[under:under] = cells
    # Marked: the outliers the table lists, the furthest out. Dating errors can make them
    # thousands (a fifth of the seeded district's dated exams), and a dot each made the
    # 2-year page 582 kB gzipped; the density cells above already hold every one.
    for e in page.outliers:
        svg.circle(x(e.ga_weeks), y(e.hc_mm), 3.2, ORANGE, stroke=INK,
                   tip=f"{clinic_text(e.clinic_id, e.clinic_name)} {e.device_id} "
                       f"{Q.day_text(e.day)}: HC {e.hc_mm:g} mm at "
                       f"{e.ga_weeks:g} weeks ({e.outside})",
                   data_outlier=e.msg_id)
    lx, ly = left + pw + 14, top + 150
    svg.rect(lx, ly, 12, 10, "#c7e9c0")
    svg.text(lx + 16, ly + 9, "3rd-97th", fill=MUTED)
    svg.line(lx, ly + 26, lx + 12, ly + 26, stroke=INK, dash="6 3")
    svg.text(lx + 16, ly + 30, "Hadlock 1984", fill=MUTED)
    svg.rect(lx, ly + 42, 12, 10, BLUES[3])
    svg.text(lx + 16, ly + 51, "exams (density)", fill=MUTED)
    svg.circle(lx + 6, ly + 68, 3.2, ORANGE, stroke=INK)
    svg.text(lx + 16, ly + 72, "outside 3rd-97th", fill=MUTED)
    if page.outside > len(page.outliers):
        svg.text(lx + 16, ly + 86, f"(the {C.OUTLIERS_SHOWN} furthest out)", fill=MUTED)
    return svg.done()


def biometry_csv(exams: list[Q.MeasuredExam]) -> str:
    return to_csv(["msg_id", "device_id", "clinic_id", "exam_id", "day", "hc_mm", "ga_weeks",
                   "ga_source", "intergrowth_z", "outside_3rd_97th", "clinic_name",
                   "midwife_told", "dates_entered"],
                  [[e.msg_id, e.device_id, e.clinic_id, e.exam_id, Q.day_text(e.day), e.hc_mm,
                    e.ga_weeks, e.ga_source, None if e.z is None else round(e.z, 3),
                    e.outside or "", e.clinic_name, e.dates_flag or "", _entered(e)]
                   for e in exams])


def _entered(e: Q.MeasuredExam) -> str:
    """When the midwife entered an exam's dates: where to teach taking the last period
    before the scan, so the page's flag can help the woman while she is there."""
    if e.ga_source != "dates":
        return ""
    return "after_exam" if e.dates_after else "during_exam"


# -- devices ---------------------------------------------------------------------------------
DEVICE_COLUMNS = ["device_id", "clinic_id", "last_seen_utc", "uplink", "uplink_since_utc",
                  "backlog", "behind", "messages_missing", "dead_letters", "disk_free_mb",
                  "temp_c", "models", "bundle", "bundle_state", "bundle_group",
                  "bundle_rollback", "bundle_error", "needs_a_visit", "clinic_name",
                  "clock_behind_s", "clock_set_utc", "clock_set_moved_s",
                  # the period's exams, and of them those whose heads the box's set-up
                  # refused, with the reasons ("screen_stretched:12|ruler_unread:1")
                  "exams", "exams_heads_refused_setup", "heads_refused_setup_reasons"]


def device_cells(d: Q.DeviceRow) -> list:
    models = " ".join(f"{k}@{v}" for k, v in sorted(d.models.items()))
    b = d.bundle
    return [d.device_id, d.clinic_id, utc(d.last_seen), d.state or "", utc(d.state_since),
            d.backlog, d.behind, d.missing, d.dead_letters, d.disk_free_mb, d.temp_c, models,
            b.get("bundle"), b.get("state"), b.get("group"), b.get("rollback"), b.get("error"),
            "; ".join(d.flags), d.clinic_name, d.clock_behind_s,
            utc(d.clock_set[0]) if d.clock_set else "", d.clock_set[1] if d.clock_set else "",
            d.exams, sum(d.setup_refused.values()),
            "|".join(f"{k}:{n}" for k, n in sorted(d.setup_refused.items(),
                                                    key=lambda kv: (-kv[1], kv[0])))]


def devices_csv(rows: list[Q.DeviceRow]) -> str:
    return to_csv(DEVICE_COLUMNS, [device_cells(d) for d in rows])


def _urgency_class(d: Q.DeviceRow) -> str:
    """The row's look by its most urgent flag: a box not heard from stands out (red edge);
    a flag only for the record (a rollback, a clock set) is grey."""
    if not d.flags:
        return ""
    return {Q.VISIT: "flag visit", Q.NOTE: "flag note"}.get(d.urgency, "flag")


def devices_table(rows: list[Q.DeviceRow], now: float, weeks: int | None = None,
                  fleet_errors: dict[str, int] | None = None) -> str:
    """``weeks``: the page's period, which the missing messages and dead letters count;
    ``fleet_errors``: distinct model-update errors per device in it (listed under the table)."""
    period = f'<br><span class="small">last {weeks} weeks</span>' if weeks else ""
    # the clinic is two cells: its id (as the CSV and the registry say it), then its name;
    # why a box needs a visit comes next, what the officer reads first (as the last column
    # it was past the right edge of a 1,280 px window)
    head = ("<tr><th>device</th><th colspan=\"2\">clinic</th><th>needs a visit</th>"
            "<th>last seen</th><th>uplink</th>"
            f"<th>backlog</th><th>behind</th><th>messages missing{period}</th>"
            f"<th>dead letters{period}</th>"
            "<th>disk free</th><th>temp</th><th>models</th><th>bundle</th></tr>")
    body = []
    for d in Q.by_urgency(rows, now):
        # the manifest's name in words: "quality head" and "quality rules" are two things
        models = "<br>".join(f"<span class=\"nobr\">{esc(k.replace('_', ' '))} {esc(v)}</span>"
                             for k, v in sorted(d.models.items()))
        bundle = _bundle_cell(d.bundle)
        n = (fleet_errors or {}).get(d.device_id, 0)
        if n:
            bundle += (f'<br><a href="#fleet-errors">{plural(n, "update error")} in the '
                       "period</a>")
        state = cls = esc(d.state or "-")
        if any(f.startswith("online but silent") or "link still says online" in f
               for f in d.flags):
            cls = "stuck"  # not green beside "last seen 39 h ago"
        body.append(
            f'<tr data-device="{esc(d.device_id)}" class="{_urgency_class(d)}">'
            f"<td>{esc(d.device_id)}</td><td>{clinic_html(d.clinic_id, weeks=weeks)}</td>"
            f'<td class="name">{esc(d.clinic_name)}</td>'
            f'<td class="flags">{esc("; ".join(d.flags)) or "-"}</td>'
            f'<td title="{esc(utc(d.last_seen))} UTC">{esc(seen_ago(d.last_seen, now))}</td>'
            f'<td class="{cls}">{state}<br><span class="small">'
            f"{esc(ago(d.state_since, now))}</span></td>"
            f'<td class="num">{_cell(d.backlog)}</td><td class="num">{_cell(d.behind)}</td>'
            f'<td class="num">{_cell(d.missing)}</td>'
            f'<td class="num">{_cell(d.dead_letters)}</td>'
            f'<td class="num">{_cell(d.disk_free_mb, " MB")}</td>'
            f'<td class="num">{_cell(d.temp_c, " °C")}</td>'
            f'<td class="small">{models}</td><td class="small">{bundle}</td></tr>')
    if not body:
        body.append('<tr><td colspan="14" class="muted">no devices in this scope</td></tr>')
    return f'<div class="wide"><table class="devices">{head}{"".join(body)}</table></div>'


FLEET_ERROR_COLUMNS = ["device_id", "clinic_id", "first_seen_utc", "last_seen_utc",
                       "health_messages", "bundle_installed", "error", "clinic_name"]


def fleet_errors_csv(errors: list[Q.FleetError]) -> str:
    return to_csv(FLEET_ERROR_COLUMNS,
                  [[e.device_id, e.clinic_id, utc(e.first_ts), utc(e.last_ts), e.health,
                    e.bundle, e.error, e.clinic_name] for e in errors])


def fleet_errors_table(errors: list[Q.FleetError], more: dict[str, int], now: float,
                       weeks: int | None = None) -> str:
    """Each device's model-update errors over the period (`weeks`), latest first: the
    history its latest health (the bundle column above) overwrites."""
    head = ("<tr><th>device</th><th>clinic</th><th>last seen</th><th>first seen</th>"
            "<th>health messages</th><th>bundle installed</th><th>error</th></tr>")
    body = []
    for e in errors:
        body.append(
            f'<tr data-device="{esc(e.device_id)}" data-health="{e.health}">'
            f"<td>{esc(e.device_id)}</td><td>{clinic_html(e.clinic_id, e.clinic_name, weeks)}</td>"
            f'<td title="{esc(utc(e.last_ts))} UTC">{esc(ago(e.last_ts, now))}</td>'
            f"<td>{esc(utc(e.first_ts))}</td>"
            f'<td class="num">{e.health}</td><td>{esc(e.bundle or "-")}</td>'
            f'<td class="warn">{esc(e.error)}</td></tr>')
    for dev, n in sorted(more.items()):
        body.append(f'<tr><td>{esc(dev)}</td><td colspan="6" class="muted">'
                    f"{plural(n, 'older error')} in the CSV</td></tr>")
    if not body:
        body.append('<tr><td colspan="7" class="muted">none in this period</td></tr>')
    return (f'<div class="wide"><table class="fleet-errors" id="fleet-errors">{head}'
            f'{"".join(body)}</table></div>')


def _bundle_cell(b: dict) -> str:
    """The installed bundle and its state; a rollback, an error, or what its self-test did
    not compare under it."""
    if not b:
        return '<span class="muted">not reported</span>'
    out = f"{esc(b.get('bundle') or '-')} <span class=small>({esc(b.get('state') or '-')})</span>"
    for key in ("rollback", "error"):
        if b.get(key):
            out += f'<br><span class="warn">{esc(key)}: {esc(b[key])}</span>'
    if b.get("unchecked"):
        out += f'<br><span class="warn">self-test: {esc(b["unchecked"])}</span>'
    return out


def _cell(value, unit: str = "") -> str:
    if value is None:
        return '<span class="muted">-</span>'
    if isinstance(value, float):
        return esc(f"{value:,.0f}{unit}" if abs(value) >= 100 else f"{value:g}{unit}")
    return esc(f"{value}{unit}")


def outliers_table(page: Q.BiometryPage) -> str:
    rows = page.outliers
    head = ("<tr><th>date</th><th>clinic</th><th>device</th><th>exam</th><th>HC (mm)</th>"
            "<th>GA (weeks)</th><th>z</th><th></th><th>the midwife was told</th></tr>")
    body = [f'<tr data-outlier="{esc(e.msg_id)}"><td>{esc(Q.day_text(e.day))}</td>'
            f"<td>{clinic_html(e.clinic_id, e.clinic_name, page.period.weeks)}</td>"
            f"<td>{esc(e.device_id)}</td>"
            f"<td>{esc(e.exam_id)}</td>"
            f'<td class="num">{e.hc_mm:g}</td><td class="num">{e.ga_weeks:g}</td>'
            f'<td class="num">{e.z:+.2f}</td><td>{esc(e.outside)}</td>'
            f"<td>{esc(DATES_FLAG_WORDS.get(e.dates_flag or '', '-'))}</td></tr>"
            for e in rows]
    if not body:
        body = ['<tr><td colspan="9" class="muted">none in this period</td></tr>']
    more = (f'<p class="muted">{page.outside - len(rows)} more in the CSV.</p>'
            if page.outside > len(rows) else "")
    return f'<div class="wide"><table class="outliers">{head}{"".join(body)}</table></div>{more}'


def dating_table(page: Q.BiometryPage) -> str:
    """Per clinic: the measured exams, the share with the age by dates, and of those the
    share entered only after the exam (too late for the page to flag the head while the
    woman was there) and the heads below the 3rd and above the 97th centile; the clinics
    dating fewest first."""
    def share(n: int, of: int) -> str:
        return f"{n} ({pct(n / of)})" if of else "-"

    body = [f'<tr data-clinic="{esc(c.clinic_id)}">'
            f"<td>{clinic_html(c.clinic_id, c.name, page.period.weeks)}</td>"
            f'<td class="num">{c.measured}</td><td class="num">{share(c.dated, c.measured)}</td>'
            f'<td class="num">{share(c.dated_after, c.dated)}</td>'
            f'<td class="num">{share(c.below_3rd, c.dated)}</td>'
            f'<td class="num">{share(c.above_97th, c.dated)}</td>'
            f'<td class="num">{share(c.flagged_small, c.dated)}</td>'
            f'<td class="num">{share(c.flagged_large, c.dated)}</td></tr>' for c in page.clinics]
    if not body:
        body = ['<tr><td colspan="8" class="muted">no measured exam in this period</td></tr>']
    return ('<div class="wide"><table class="dating"><tr><th>clinic</th><th>measured</th>'
            "<th>with the age by dates</th><th>of those, entered after the exam</th>"
            "<th>below 3rd</th><th>above 97th</th>"
            "<th>told smaller than the dates</th><th>told larger</th></tr>"
            f"{''.join(body)}</table></div>")


DATES_FLAG_WORDS = {"small": "smaller than the dates", "large": "larger than the dates"}


# -- one clinic ------------------------------------------------------------------------------
def clinic_weeks_svg(page: Q.ClinicPage) -> str:
    """The clinic's exams, a bar a week, and the same week of the previous period as a dark
    tick across it (`Period.previous`). Each week's column carries its numbers
    (``data-*``) and its words (a hover title); its CSV is the same rows."""
    rows, weeks = page.weeks(), page.period.weeks
    # 8 weeks in 360 px, a 390 px phone's plot: wider, the plot opened on its right end
    # (`.plot.recent`) with the count axis scrolled away, and a phone has no hover title
    bar_w = max(6, min(38, 780 // len(rows)))
    left, top, plot_h = 44, 30, 150
    most = max([r.exams for r in rows] + [r.previous_exams for r in rows] + [1])
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 10 ** 9)
                if most / s <= 5)
    y_max = -(-most // step) * step

    def y(v: float) -> float:
        return top + plot_h - v / y_max * plot_h

    key, line_key = (BLUES[3], "exams that week"), "the same week of the previous period"
    one_row = legend_width([key]) + 18 + text_width(line_key)
    two_rows = one_row > bar_w * len(rows)  # the key's second item under the first
    keys_w = max(legend_width([key]), 18 + text_width(line_key)) if two_rows else one_row
    width = left + max(bar_w * len(rows), math.ceil(keys_w)) + 12
    who = clinic_text(page.clinic_id, page.name)
    svg = Svg(width, top + plot_h + 54 + 16 * two_rows, f"Exams per week at {who}, and "
              "the same week of the previous period", "clinic-weeks")
    right = left + bar_w * len(rows)
    for v in range(0, y_max + 1, step):
        svg.line(left, y(v), right, y(v), stroke="#eee")
        svg.text(left - 6, y(v) + 4, v, anchor="end", fill=MUTED)
    every = -(-48 // bar_w)  # a date every ~48 px, back from this week ("so far", above)
    for i in range(len(rows) - 1 - every, -1, -every):
        svg.text(left + i * bar_w, top + plot_h + 14, time.strftime(
            "%d %b %y", time.gmtime((rows[i].week * 7 - 3) * C.DAY_S)), fill=MUTED, size=10)
    svg.text(right, top - 10, "this week so far", anchor="end", fill=MUTED, size=10)
    for i, r in enumerate(rows):
        x = left + i * bar_w
        svg.rect(x + 1, y(r.exams), bar_w - 2, plot_h * r.exams / y_max, BLUES[3])
        svg.line(x + 0.5, y(r.previous_exams), x + bar_w - 0.5, y(r.previous_exams),
                 stroke=INK, width=2)
    last = page.period.last_week
    for i, r in enumerate(rows):  # over the bars: the week's words where the pointer is
        tip = (f"Week of {Q.week_text(r.week)}{' (this week so far)' if r.week == last else ''}"
               f": {plural(r.exams, 'exam')}; the same week of the previous period (week of "
               f"{Q.week_text(r.week - weeks)}): {plural(r.previous_exams, 'exam')}"
               + (f"; {plural(r.silent, 'silent weekday')}" if r.silent else "")
               + (f"; {plural(r.missing, 'message')} missing" if r.missing else ""))
        svg.rect(left + i * bar_w, top, bar_w, plot_h, "#fff", tip=tip, fill_opacity=0,
                 data_week=Q.week_text(r.week), data_exams=r.exams,
                 data_previous=r.previous_exams,
                 data_previous_week=Q.week_text(r.week - weeks), data_days=r.days,
                 data_silent_weekdays=r.silent)
    ly = top + plot_h + 40
    x = legend(svg, left, ly, [key])
    if two_rows:
        x, ly = left, ly + 16
    svg.line(x, ly - 4, x + 14, ly - 4, stroke=INK, width=2)
    svg.text(x + 18, ly, line_key, fill=MUTED)
    return svg.done()


def clinic_csv(page: Q.ClinicPage) -> str:
    """A row per week of the clinic's chart: its exams, silent weekdays (of those counted:
    ClinicsPage.counts), messages missing, best frames and those not captured, and the
    same week of the previous period with its exams."""
    weeks = page.period.weeks
    return to_csv(["clinic_id", "week_starting", "days_in_period", "exams", "silent_weekdays",
                   "weekdays_counted", "messages_missing", "best_frames",
                   f"best_frames_below_{C.MIN_QUALITY}", "previous_week_starting",
                   "previous_period_exams", "clinic_name", "exams_heads_refused_setup"],
                  [[page.clinic_id, Q.week_text(r.week), r.days, r.exams, r.silent, r.counted,
                    r.missing, r.best_frames, r.below_capture, Q.week_text(r.week - weeks),
                    r.previous_exams, page.name, r.setup_refused] for r in page.weeks()])


FIGURE_WORDS = {
    "exams": "Exams", "days_heard": "Days a box of the clinic was heard",
    "silent_weekdays": "Silent weekdays", "messages_missing": "Messages missing",
    "not_captured": f"Best frames under {C.MIN_QUALITY} (found, not captured)",
    "measured": "Heads measured", "dated": "of those, with the age by dates",
    "below_3rd": "Dated heads below the 3rd centile",
    "above_97th": "Dated heads above the 97th centile",
    "told_small": "Dated heads the midwife was told are " + DATES_FLAG_WORDS["small"],
    "told_large": "Dated heads the midwife was told are " + DATES_FLAG_WORDS["large"],
    "setup_refused": "Exams whose heads the box's set-up refused (no head measured: "
                     "calibration, depth scale or picture shape)",
    "withdrawn": f"{WITHDRAWN_WORDS[:1].upper()}{WITHDRAWN_WORDS[1:]} (in no figure above)"}
def figure_words(key: str) -> str:
    reason = key.removeprefix("withdrawn:")
    if reason != key:
        return f"of those, {C.withdrawal_words(reason)}"
    protocol = key.removeprefix("complete:")
    if protocol == key:
        return FIGURE_WORDS[key]
    title = C.protocol_title(protocol)
    return f"{title[:1].upper()}{title[1:]} exams complete"


def clinic_compare_table(page: Q.ClinicPage) -> str:
    """This period's figures beside the previous period's (`Period.previous`), and the
    change: a count by its difference, a share by its whole percentage points."""
    now, was = page.now.figures(), page.before.figures()
    order = list(FIGURE_WORDS)  # the counts of days first, then completeness per protocol
    keys = order[:4] + sorted(k for k in now.keys() | was.keys()
                              if k.startswith("complete:")) + order[4:] + sorted(
        k for k in now.keys() | was.keys() if k.startswith("withdrawn:"))

    def cell(n: int, of: int | None) -> tuple[str, str]:
        """(the words, the data-* value): a count, or a share of `of` ("" for none)."""
        if of is None:
            return str(n), str(n)
        return (f"{pct(n / of)} ({n} of {of})", f"{n / of:.6f}") if of else ("-", "")

    body = []
    for key in keys:
        # a protocol done in one period only: none of none in the other; a count (an exam
        # withdrawn for a reason) in one only: 0 in the other, so "1 before, none now" is a
        # change of -1, not "-"
        none = (0, None) if (now.get(key) or was.get(key))[1] is None else (0, 0)
        (n, of), (m, of_was) = now.get(key, none), was.get(key, none)
        said, said_was = cell(n, of), cell(m, of_was)
        if of is None:
            change = f"{n - m:+d}" if n != m else "no change"
        elif of and of_was:
            points = Q.percent(n / of) - Q.percent(m / of_was)
            unit = "point" if abs(points) == 1 else "points"
            change = f"{points:+d} {unit}" if points else "no change"
        else:
            change = "-"
        body.append(f'<tr data-figure="{esc(key)}" data-now="{said[1]}" '
                    f'data-before="{said_was[1]}"><td>{esc(figure_words(key))}</td>'
                    f"<td class=num>{said[0]}</td><td class=num>{said_was[0]}</td>"
                    f"<td class=num>{change}</td></tr>")
    per, before = page.period, page.before.days.period
    return (f'<div class="wide"><table class="compare" '
            f'data-previous-first="{Q.day_text(before.first_day)}" '
            f'data-previous-last="{Q.day_text(before.last_day)}"><tr><th></th>'
            f"<th>this period<br><span class=small>{Q.day_text(per.first_day)} to "
            f"{Q.day_text(per.last_day)}</span></th><th>the period before<br>"
            f"<span class=small>{Q.day_text(before.first_day)} to "
            f"{Q.day_text(before.last_day)}</span></th><th>change</th></tr>"
            f"{''.join(body)}</table></div>")


__all__ = ["MUTED"]
