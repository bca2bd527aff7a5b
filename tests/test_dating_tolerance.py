"""The age by HC is said give or take what a scan at that age can tell: "GA 19w 4d" alone
read as exact to the day (a midwife's walk). The tolerance is ACOG Committee Opinion 700's
redating threshold at that age (`wire.dating`), the one the HC-for-dates flag already
uses: 7 days at 14-15 weeks, 10 at 16-21, 14 at 22-27, 21 from 28. Said on the exam card
(`state.screening.ga_tolerance_days`) and on the report, beside the age and in how it was
obtained."""

from __future__ import annotations

import re
import time

from edge.exam.protocol import load_protocols
from edge.exam.screening import dating_tolerance_days, screening
from edge.exam.session import ExamSession
from edge.models.quality import load_rules
from edge.web.history import present, protocol_titles, read_protocols, render_report
from edge.web.i18n import catalog


def test_the_tolerance_follows_acog_s_bands_and_none_without_an_age():
    assert [dating_tolerance_days(w) for w in (14.0, 15.9, 16.0, 21.9, 22.0, 27.9, 28.0,
                                               41.5)] == [7, 7, 10, 10, 14, 14, 21, 21]
    for no_age in (None, float("nan"), "19", True, 13.9):
        assert dating_tolerance_days(no_age) is None, no_age
    assert screening({"ga_weeks": 19.5}, None)["ga_tolerance_days"] == 10
    assert screening(None, None)["ga_tolerance_days"] is None


def _report(bio: dict, lang: str) -> str:
    session = ExamSession(load_protocols()["biometry"])
    summary = {**session.summary("gap", ended_ts=time.time() - 600), "biometry": bio}
    protocols = read_protocols()
    exam = present(summary, {}, protocols, protocol_titles(protocols))
    return render_report(exam, catalog(lang, load_rules(None)), {"device_id": "box-1",
                                                                 "clinic_id": "clinic-1"})


def test_the_report_says_the_age_give_or_take_acog_s_days_in_both_languages():
    bio = {"measured": 5, "declined": {}, "hc_mm": 175.0, "bpd_mm": 47.0, "ofd_mm": 60.0,
           "best_frames": 3, "ga_weeks": 20.0, "ga_low_weeks": 19.8, "ga_high_weeks": 20.2}
    english = re.sub(r"<[^>]+>", " ", _report(bio, "en"))
    assert re.search(r"20w 0d ± 10 days", english), english
    assert "within about 10 days either way: ACOG Committee Opinion 700" in english
    french = re.sub(r"<[^>]+>", " ", _report(bio, "fr"))
    assert "± 10 jours" in french and "à environ 10 jours près" in french
    late = re.sub(r"<[^>]+>", " ", _report({**bio, "hc_mm": 290.0, "ga_weeks": 31.6,
                                            "ga_low_weeks": 31.4, "ga_high_weeks": 31.8},
                                           "en"))
    assert "± 21 days" in late


def test_a_head_with_no_age_has_no_tolerance_on_the_report():
    bio = {"measured": 3, "declined": {}, "hc_mm": 80.0, "bpd_mm": 22.0, "ofd_mm": 30.0,
           "best_frames": 3}
    text = re.sub(r"<[^>]+>", " ", _report(bio, "en"))
    assert "±" not in text and "ACOG Committee Opinion 700 (2017) moves" not in text


def test_the_tolerance_is_that_of_the_age_as_it_is_said_to_the_day():
    """An age within half a day below a band's start is said as the band's first day
    ("22w 0d"): its tolerance is that band's, as ACOG gives it for 22w 0d, not the band
    before (the card and the report said "GA 22w 0d ± 10 days")."""
    for weeks, said, days in ((15.95, "16w 0d", 10), (21.95, "22w 0d", 14),
                              (27.95, "28w 0d", 21), (21.92, "21w 6d", 10)):
        bio = {"measured": 5, "declined": {}, "hc_mm": 200.0, "bpd_mm": 50.0, "ofd_mm": 64.0,
               "best_frames": 3, "ga_weeks": weeks}
        assert screening(bio, None)["ga_tolerance_days"] == days, weeks
        for lang, unit in (("en", "days"), ("fr", "jours")):
            text = re.sub(r"<[^>]+>", " ", _report(bio, lang))
            wd = said if lang == "en" else said.replace("w ", " SA ").replace("d", " j")
            assert f"{wd} ± {days} {unit}" in text, (weeks, lang)


def test_the_reports_models_line_sets_the_colon_as_each_language_does():
    """The colon after the models' label was the code's, English-style: French sets a space
    before it, as every other label of the French page does (a walk's find)."""
    session = ExamSession(load_protocols()["biometry"])
    summary = {**session.summary("gap", ended_ts=time.time() - 600),
               "models": {"plane_student": "1.5.0", "head_segmenter": "1.4.0"}}
    protocols = read_protocols()
    exam = present(summary, {}, protocols, protocol_titles(protocols))
    said = {lang: re.sub(r"<[^>]+>", " ", render_report(
        exam, catalog(lang, load_rules(None)), {"device_id": "box-1", "clinic_id": "c-1"}))
        for lang in ("en", "fr")}
    assert "Model versions: plane_student 1.5.0 · head_segmenter 1.4.0" in said["en"]
    assert "Versions des modèles\u202f: plane_student 1.5.0" in said["fr"]
    assert "modèles:" not in said["fr"]
