"""The clinics plot fits a laptop's page, long clinic names and all.

On a 1,280 px window the 8-week daily plot opened scrolled to its latest end and was wider
than its box, so the left of its label column was out of view; and a name in capitals ran
out of the plot's left edge altogether, scrolled or not: the column was 6.2 px a character
wide, which mixed case takes but "KIBAHA DISTRICT HOSPITAL" does not (a district health
officer's report). Every word drawn is measured here in DejaVu Sans, what Debian's Chromium
draws ``system-ui`` in and the widest of the common system fonts, and must lie inside the
drawing, which must lie inside its box at 1,280 px. Real parts: the pages' own plot code,
on clinics pages made in memory.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from central.dashboard import pages as P
from central.dashboard import queries as Q

CSS = Path(P.__file__).resolve().parent / "static" / "dash.css"
WINDOW = 1280  # the officer's laptop
SCROLLBAR = 17  # a classic one, as on Windows (an overlay scrollbar takes none)
# DejaVu Sans Book's advance widths in ems (its glyph table; Chromium draws the same): the
# characters of the names and words below
DEJAVU_EM = {
    **dict(zip("abcdefghijklmnopqrstuvwxyz", (
        .613, .635, .55, .635, .615, .352, .635, .634, .278, .278, .579, .278, .974, .634,
        .612, .635, .635, .411, .521, .392, .634, .592, .818, .592, .592, .525), strict=True)),
    **dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", (
        .711, .686, .698, .77, .632, .575, .775, .752, .295, .295, .656, .557, .863, .748,
        .787, .603, .787, .695, .635, .611, .732, .684, .989, .685, .611, .685), strict=True)),
    **dict.fromkeys("0123456789", .636),
    " ": .318, "+": .838, "-": .361, ",": .318, ".": .318, "'": .275, "(": .39, ")": .39,
    ":": .337, "\u2026": 1.0, "%": .95, "&": .78, "/": .337}
NAMES = {  # a district map's names (up to 100 characters), long, in capitals, short
    "clinic-01": "Mwananyamala Regional Referral Hospital, Maternity and Antenatal Wing",
    "clinic-02": "KIBAHA DISTRICT HOSPITAL MWEMBENI WARD",
    "clinic-03": "Clinic 3",
    "clinic-04": "WAWA MWEMBENI MM HEALTH CENTRE WWW " * 2 + "WAWA MWEMBENI MM HEALTH CENTR",
}


def dejavu_px(text: str, size: float) -> float:
    return sum(DEJAVU_EM[ch] for ch in text) * size


def box_width_at(window: int) -> float:
    """What dash.css leaves a plot inside its box: the window less a scrollbar, main's
    padding and the box's border and padding, each side."""
    css = CSS.read_text()
    main = re.search(r"\nmain \{ padding: \d+px (\d+)px", css)
    plot = re.search(r"\.plot \{[^}]*border: (\d+)px[^}]*padding: (\d+)px", css)
    assert main and plot, "dash.css no longer says main's and .plot's padding as it did"
    return window - SCROLLBAR - 2 * int(main.group(1)) - 2 * (int(plot.group(1))
                                                            + int(plot.group(2)))


def page(weeks: int) -> Q.ClinicsPage:
    per = Q.period(weeks)
    cells = {(c, d): Q.ClinicDay(c, d, exams=2, health=8) for c in NAMES for d in per.days}
    return Q.ClinicsPage(per, list(NAMES), cells, names=dict(NAMES))


def words(svg: str) -> list[tuple[float, float, str, str]]:
    """Each text drawn: (left, right) in DejaVu Sans, its words and its hover title."""
    out = []
    for attrs, tip, text in re.findall(
            r"<text ([^>]*)>(?:<title>([^<]*)</title>)?([^<]*)</text>", svg):
        text, tip = html.unescape(text), html.unescape(tip)
        x = float(re.search(r'\bx="([-\d.]+)"', attrs).group(1))
        size = re.search(r'font-size="([\d.]+)"', attrs)
        w = dejavu_px(text, float(size.group(1)) if size else 11)
        anchor = re.search(r'text-anchor="(\w+)"', attrs).group(1)
        left = {"start": x, "middle": x - w / 2, "end": x - w}[anchor]
        out.append((left, left + w, text, tip))
    return out


@pytest.mark.parametrize("weeks", [8, 26, 52, 104])
def test_the_clinics_plot_fits_its_box_on_a_laptop_and_every_word_lies_inside_it(weeks):
    svg = P.clinics_svg(page(weeks))
    width = float(re.search(r'<svg [^>]*width="(\d+)"', svg).group(1))
    assert width <= box_width_at(WINDOW), (
        f"{weeks} weeks: the plot is {width:.0f} px in a {box_width_at(WINDOW):.0f} px box: "
        "it opens scrolled, the names' start out of view")
    for left, right, text, _ in words(svg):
        assert left >= 0 and right <= width, (
            f"{text!r} is drawn over {left:.0f}-{right:.0f} px of a {width:.0f} px plot")


def test_a_name_too_long_for_the_label_column_ends_in_an_ellipsis_and_its_title_is_whole():
    drawn = [(text, tip) for _, _, text, tip in words(P.clinics_svg(page(8))) if tip]
    for clinic, name in NAMES.items():
        labels = [text for text, tip in drawn if tip == f"{name} ({clinic})"]
        assert len(labels) == 2, (clinic, labels)  # beside the first day and the last
        for label in labels:
            if name == "Clinic 3":
                assert label == name
            else:
                assert label.endswith("\u2026") and len(label) > 8, label
                assert name.startswith(label[:-1].rstrip()), label


def heads(svg: str) -> list[tuple[float, float, float, str]]:
    """The words drawn above the cells (the dates, "today", the totals' heads): (baseline
    y, left, right, words) in DejaVu Sans."""
    out = []
    for attrs, text in re.findall(r"<text ([^>]*)>([^<]*)</text>", svg):
        y = float(re.search(r'\by="([-\d.]+)"', attrs).group(1))
        size = re.search(r'font-size="([\d.]+)"', attrs)
        if y >= 34 or not size:  # the cells' top (pages._clinics_frame); heads are 10 px
            continue
        x, w = float(re.search(r'\bx="([-\d.]+)"', attrs).group(1)), dejavu_px(text, 10)
        anchor = re.search(r'text-anchor="(\w+)"', attrs).group(1)
        left = {"start": x, "middle": x - w / 2, "end": x - w}[anchor]
        out.append((y, left, left + w, html.unescape(text)))
    return out


@pytest.mark.parametrize("weekday", range(7))
def test_no_two_words_over_the_plot_overlap_whatever_the_day_today(weekday):
    """On a Monday the week's date, drawn from the last column on, ran into the "exams"
    head beside the cells: "07 Decexams" (a user's walk, Monday 7 December)."""
    monday = 1796601600.0  # Monday 7 December 2026, 00:00 UTC
    per = Q.period(8, now=monday + weekday * 86400 + 3600)
    cells = {(c, d): Q.ClinicDay(c, d, exams=2, health=8) for c in NAMES for d in per.days}
    drawn = heads(P.clinics_svg(Q.ClinicsPage(per, list(NAMES), cells, names=dict(NAMES))))
    assert any(text == "today" for *_, text in drawn), drawn
    for i, (y, left, right, text) in enumerate(drawn):
        for y2, left2, right2, text2 in drawn[i + 1:]:
            assert y != y2 or right <= left2 or right2 <= left, (
                f"{text!r} ({left:.0f}-{right:.0f} px) and {text2!r} ({left2:.0f}-"
                f"{right2:.0f} px) overlap")
