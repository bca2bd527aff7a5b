"""The exam report shows where the head was measured (a midwife's walk).

The report's HC is the median of the exam's best measured head frames, but its only head
picture was the head plane's best frame by quality: another frame, often another HC, with
no ellipse on it. A doctor receiving the referral, or the midwife checking the printout,
could not see where the head was measured nor judge whether the ellipse sat on the skull.

Now the exam keeps, when it ends, the frame whose HC is the reported one (the median of the
best heads, or the nearest to it) as one more thumbnail, `head-measured.jpg`, with the
fitted ellipse and the BPD and OFD calipers drawn on it, within the thumbnails' quota and
written whole or not at all; the journal lists it with the exam's best frames, and the
report shows it beside the figures with a caption, in English and in French. An exam
journaled before says nothing more, and a damaged entry or ellipse never breaks the page.

Real HC18 heads through the device's own scorer, exam session, thumbnail store, journal
and report (`edge.web.history.ExamHistory`, as the page's server calls it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.sources import Frame
from edge.config import load_settings
from edge.exam.protocol import find_protocol
from edge.exam.session import ExamSession, ExamSettings
from edge.exam.thumbs import ThumbStore
from edge.models.roi import Roi
from edge.scorer import make_scorer
from edge.store.journal import JOURNAL_FILE, Journal
from edge.web.history import ExamHistory, half_up
from quantize.data import read_frame
from tests.conftest import DATA

pytestmark = pytest.mark.skipif(not (DATA / "hc18").is_dir(), reason="no shared data")
PIXEL_SIZE_MM = 0.15
# Five heads of different sizes, the best by quality first: its HC (about 223 mm) is not
# the median of the five (about 180 mm, 414_HC), as on the walk.
HEADS = ("205_HC.png", "106_HC.png", "250_HC.png", "414_HC.png", "515_HC.png")
MEASURED_NAME = "head-measured.jpg"


@pytest.fixture(scope="module")
def heads():
    """Each head scored once by the device's scorer: (image, result dict, region)."""
    scorer = make_scorer(load_settings(overrides={"biometry": {"pixel_size_mm":
                                                               PIXEL_SIZE_MM}}))
    out = []
    for index, name in enumerate(HEADS):
        image = read_frame(DATA / "hc18" / "images" / name)
        scorer._roi_key = None
        record = scorer.score(Frame(name, index, image, time.monotonic(), time.time())).to_dict()
        assert record["biometry"]["status"] == "ok", (name, record["biometry"])
        out.append((image, record, Roi(*record["roi"]) if record["roi"] else None))
    return out


def run_exam(heads, thumbs: ThumbStore | None, order=None) -> tuple[ExamSession, dict]:
    session = ExamSession(find_protocol("biometry"), thumbs, ExamSettings())
    for i, (image, record, roi) in enumerate(heads if order is None else
                                             [heads[k] for k in order]):
        session.add(record, image, roi, now=float(i))
    return session, session.finish("source_end")


def journaled(state: Path, session: ExamSession, body: dict) -> ExamHistory:
    journal = Journal(state / JOURNAL_FILE)
    assert journal.add_exam(None, body, session.kept_frames())
    journal.close()
    return ExamHistory(state)


def report(history: ExamHistory, exam_id: str, lang: str = "en") -> str:
    response = asyncio.run(history.report(exam_id, lang, None, {}, True, None))
    assert response.status == 200
    return response.text


def outline(ellipse, roi: Roi | None, image_shape, thumb_shape, n: int = 180) -> np.ndarray:
    """Points of a frame's ellipse (cx, cy, semi-axes, angle; frame pixels) where they fall
    on its thumbnail: the region cropped, then scaled to the thumbnail's size."""
    cx, cy, a, b, angle = ellipse
    x0, y0, w0, h0 = (roi.x, roi.y, roi.w, roi.h) if roi else (0, 0, image_shape[1],
                                                                image_shape[0])
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    x = cx + a * np.cos(t) * c - b * np.sin(t) * s
    y = cy + a * np.cos(t) * s + b * np.sin(t) * c
    return np.stack([(x - x0) * thumb_shape[1] / w0, (y - y0) * thumb_shape[0] / h0], 1)


def yellow(jpeg: np.ndarray) -> np.ndarray:
    """(x, y) of the pixels drawn yellow: an ultrasound frame is grey."""
    b, g, r = (jpeg[..., i].astype(int) for i in range(3))
    ys, xs = np.nonzero((r > 140) & (g > 140) & (b < np.minimum(r, g) - 70))
    return np.stack([xs, ys], 1).astype(float)


def assert_drawn_on(jpeg: np.ndarray, expected: np.ndarray, tolerance_px: float = 3.0) -> None:
    """The ellipse drawn on the picture is the one expected: nearly every yellow pixel lies
    on it, and it is drawn all round."""
    drawn = yellow(jpeg)
    assert len(drawn) > 200, f"no ellipse drawn ({len(drawn)} yellow pixels)"
    gap = np.sqrt(((drawn[:, None, :] - expected[None, :, :]) ** 2).sum(-1))
    on_it = (gap.min(1) <= tolerance_px).mean()
    covered = (gap.min(0) <= tolerance_px).mean()
    assert on_it > 0.95 and covered > 0.95, (on_it, covered)


# -- the exam -----------------------------------------------------------------------------
def test_the_exam_keeps_the_frame_its_hc_comes_from_with_the_fitted_ellipse_drawn_on_it(
        heads, tmp_path):
    state = tmp_path / "state"
    session, body = run_exam(heads, ThumbStore(state / "thumbs", 10**8))
    hcs = [record["biometry"]["hc_mm"] for _, record, _ in heads]
    median = sorted(hcs)[2]
    assert body["biometry"]["hc_mm"] == pytest.approx(median, abs=0.01)
    k = hcs.index(median)
    measured = session.measured_head
    # the frame whose HC the exam reports, with its own figures
    assert measured["frame"] == heads[k][1]["frame"] == 3
    assert measured["plane"] == heads[k][1]["plane"]
    for key in ("hc_mm", "bpd_mm", "ofd_mm"):
        assert measured[key] == pytest.approx(heads[k][1]["biometry"][key], abs=0.01), key
    assert measured["of"] == 5
    # ... which is not the head plane's best frame, the one the report showed
    best = session.checklist()[0]["best"]
    assert best["frame"] != measured["frame"] and best["hc_mm"] != pytest.approx(median)
    # its thumbnail is written beside the planes', under the exam's folder
    assert measured["thumbnail"] == f"thumbs/{session.exam_id}/{MEASURED_NAME}"
    path = state / measured["thumbnail"]
    jpeg = cv2.imread(str(path))
    assert jpeg is not None and jpeg.shape[1] == ExamSettings().thumb_width
    assert not list(path.parent.glob("*.tmp"))
    image, record, roi = heads[k]
    assert_drawn_on(jpeg, outline(record["biometry"]["ellipse"], roi, image.shape,
                                  jpeg.shape))
    # the other heads' ellipses are not what is drawn
    other = heads[0]
    with pytest.raises(AssertionError):
        assert_drawn_on(jpeg, outline(other[1]["biometry"]["ellipse"], other[2],
                                      other[0].shape, jpeg.shape))
    # the journal keeps it with the best frames, under a name no plane has
    kept = session.kept_frames()
    assert kept["head_measured"]["thumbnail"] == measured["thumbnail"]
    assert set(kept) - {"head_measured"} == set(session.best_frames())


def test_with_an_even_number_of_best_heads_the_frame_nearest_their_median_is_shown(
        heads, tmp_path):
    """Four best heads: the reported HC is the mean of the middle two, no frame's. The
    picture is of the nearer of those two, its own HC in the caption."""
    order = (1, 2, 3, 4)  # 155, 164, 180, 201 mm: the median 172 mm, nearer 164 (250_HC)
    session, body = run_exam(heads, ThumbStore(tmp_path / "thumbs", 10**8), order)
    hcs = sorted(heads[k][1]["biometry"]["hc_mm"] for k in order)
    assert body["biometry"]["hc_mm"] == pytest.approx((hcs[1] + hcs[2]) / 2, abs=0.01)
    nearest = min(order, key=lambda k: abs(heads[k][1]["biometry"]["hc_mm"]
                                           - body["biometry"]["hc_mm"]))
    assert session.measured_head["frame"] == heads[nearest][1]["frame"]
    assert session.measured_head["hc_mm"] == pytest.approx(
        heads[nearest][1]["biometry"]["hc_mm"], abs=0.01)


def test_where_the_segmenters_own_passes_measure_again_the_ellipse_drawn_is_theirs(tmp_path):
    """A segmenter whose manifest asks for a second pass on a crop around the head: the
    exam measures its reported heads again when it ends. The picture shows the ellipse of
    that measurement, the one whose HC the report gives, not the live pass's."""
    from dataclasses import replace

    from edge.models.biometry import Passes, measure_frame

    scorer = make_scorer(load_settings(overrides={"biometry": {"pixel_size_mm":
                                                               PIXEL_SIZE_MM}}))
    passes = Passes(refine_crop_margin=0.2, refine_max_zoom=1.2)
    scorer.head = replace(scorer.head, passes=passes)
    session = ExamSession(find_protocol("biometry"), ThumbStore(tmp_path / "thumbs", 10**8),
                          ExamSettings(), measure_kept=scorer.measure_kept)
    image = read_frame(DATA / "hc18" / "images" / "500_HC.png")
    scorer._roi_key = None
    record = scorer.score(Frame("500_HC.png", 0, image, time.monotonic(),
                                time.time())).to_dict()
    roi = Roi(*record["roi"])
    session.add(record, image, roi, now=0.0)
    body = session.finish("source_end")
    exact = measure_frame(scorer.head.model, image, roi, PIXEL_SIZE_MM, scorer.head.settings,
                          passes)
    assert abs(exact.hc_mm - record["biometry"]["hc_mm"]) > 0.05  # the passes differ
    assert session.measured_head["hc_mm"] == pytest.approx(exact.hc_mm, abs=0.01)
    assert body["biometry"]["hc_mm"] == pytest.approx(exact.hc_mm, abs=0.01)
    jpeg = cv2.imread(str(tmp_path / session.measured_head["thumbnail"]))
    assert_drawn_on(jpeg, outline(exact.ellipse, roi, image.shape, jpeg.shape))
    # the ellipse drawn (in the picture's pixels) is the second measurement's, its semi-axes
    # a pixel away from the live pass's
    scale = (jpeg.shape[1] / roi.w + jpeg.shape[0] / roi.h) / 2
    drawn = [v / scale for v in session.measured_head["ellipse"][2:4]]
    assert drawn == pytest.approx(list(exact.ellipse[2:4]), abs=0.05)
    assert drawn != pytest.approx(record["biometry"]["ellipse"][2:4], abs=0.5)


def test_the_measured_head_stays_within_the_thumbnails_quota(heads, tmp_path, caplog):
    """A quota with room for the plane's thumbnails but not this one: the picture is not
    kept (one log line), never the exam nor its figures, and older exams make room."""
    folder = tmp_path / "thumbs"
    # room for the planes' two thumbnails (about 12 kB each), not for a third
    with caplog.at_level(logging.WARNING, logger="edge.exam.thumbs"):
        session, body = run_exam(heads, ThumbStore(folder, 30_000))
    assert body["biometry"]["hc_mm"] and session.measured_head["frame"] == 3
    assert "thumbnail" not in session.measured_head
    assert not (folder / session.exam_id / MEASURED_NAME).exists()
    assert sum(f.stat().st_size for f in folder.rglob("*.jpg")) <= 30_000
    assert sum("quota" in r.getMessage() for r in caplog.records) == 1
    # the next exam's own picture removes the older exam's folder, as any thumbnail does
    store = ThumbStore(folder, 60_000)
    nxt, _ = run_exam(heads, store)
    assert (folder / nxt.exam_id / MEASURED_NAME).is_file()
    assert sum(f.stat().st_size for f in folder.rglob("*.jpg")) <= 60_000


def test_the_measured_head_is_written_whole_or_not_at_all(heads, tmp_path, monkeypatch):
    import os
    real = os.replace

    def fails_for_it(src, dst):
        if str(dst).endswith(MEASURED_NAME):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr("edge.exam.thumbs.os.replace", fails_for_it)
    session, body = run_exam(heads, ThumbStore(tmp_path / "thumbs", 10**8))
    folder = tmp_path / "thumbs" / session.exam_id
    assert body["biometry"]["hc_mm"] and "thumbnail" not in session.measured_head
    assert not (folder / MEASURED_NAME).exists() and not list(folder.glob("*.tmp"))
    assert (folder / "brain-tv.jpg").is_file()  # the planes' thumbnails are unaffected


# -- the report ---------------------------------------------------------------------------
def test_the_report_shows_the_measured_head_with_its_caption_and_serves_it(heads, tmp_path):
    state = tmp_path / "state"
    session, body = run_exam(heads, ThumbStore(state / "thumbs", 10**8))
    history = journaled(state, session, body)
    try:
        page = report(history, session.exam_id)
        src = f"/api/thumb/{session.exam_id}/{MEASURED_NAME}"
        assert f'<img class="thumb" src="{src}"' in page
        hc = half_up(session.measured_head["hc_mm"])
        bpd = half_up(session.measured_head["bpd_mm"])
        assert f"HC measured here: {hc} mm" in page and f"BPD {bpd} mm" in page
        assert "Frame 3, Head (ventricles): of the 5" in page  # no "(Head (...))"
        assert "the 5 best head frames" in page
        french = report(history, session.exam_id, "fr")
        assert f"PC mesuré ici\u202f: {hc} mm" in french and f"BIP {bpd} mm" in french
        assert "Image 3, Tête (ventricules)\u202f:" in french
        # the page's server serves it: the journal lists it for that exam
        found, path = asyncio.run(history.thumbnail(session.exam_id, MEASURED_NAME))
        assert found == "ok" and path == (state / session.measured_head["thumbnail"]).resolve()
        # the head plane's best frame stays in the checklist
        assert f"/api/thumb/{session.exam_id}/brain-tv.jpg" in page
        # removed by the quota since: said in words, the figures stay
        path.unlink()
        page = report(history, session.exam_id)
        assert src not in page and "Image no longer kept" in page
        assert f"HC measured here: {hc} mm" in page
    finally:
        history.close()


def test_an_exam_journaled_before_renders_as_it_did(heads, tmp_path):
    """An exam journaled without the measured head (an older box, a rebuilt exam) says
    nothing more; one whose thumbnail was not written gives the caption alone."""
    state = tmp_path / "state"
    session, body = run_exam(heads, ThumbStore(state / "thumbs", 10**8))
    journal = Journal(state / JOURNAL_FILE)
    assert journal.add_exam(None, body, session.best_frames())
    journal.close()
    history = ExamHistory(state)
    try:
        page = report(history, session.exam_id)
        assert "measured here" not in page and MEASURED_NAME not in page
        assert f"/api/thumb/{session.exam_id}/brain-tv.jpg" in page
        assert f"{half_up(body['biometry']['hc_mm'])} mm" in page
        assert asyncio.run(history.thumbnail(session.exam_id, MEASURED_NAME))[0] == "unknown"
    finally:
        history.close()
    # no thumbnails at all: which frame, said in words
    plain, plain_body = run_exam(heads, None)
    assert "thumbnail" not in plain.measured_head
    history = journaled(tmp_path / "plain", plain, plain_body)
    try:
        page = report(history, plain.exam_id)
        assert "HC measured on frame 3, Head (ventricles):" in page
        assert MEASURED_NAME not in page and "No image" in page  # the checklist's, as before
    finally:
        history.close()


@pytest.mark.parametrize("entry", [
    None, 7, "thumbs/x/head-measured.jpg", [], {},
    {"thumbnail": "thumbs/../../web-pin.json", "hc_mm": 180.0, "frame": 3},
    {"thumbnail": 5, "hc_mm": "180", "frame": "3", "plane": ["x"], "of": -1},
    {"hc_mm": 1e300, "bpd_mm": float("nan"), "ofd_mm": -4, "frame": 2**70, "of": 1e30},
    {"hc_mm": 180.0, "bpd_mm": None, "ofd_mm": None, "frame": None, "plane": None,
     "of": None, "ellipse": "x"},
    {"hc_mm": 180.0, "plane": "<script>alert(1)</script>", "frame": 3, "of": 5,
     "thumbnail": "thumbs/{id}/head-measured.jpg"},
])
def test_a_damaged_measured_head_entry_never_breaks_the_report(heads, tmp_path, entry):
    state = tmp_path / "state"
    session, body = run_exam(heads, ThumbStore(state / "thumbs", 10**8))
    kept = session.best_frames()
    if isinstance(entry, dict) and isinstance(entry.get("thumbnail"), str):
        entry = {**entry, "thumbnail": entry["thumbnail"].replace("{id}", session.exam_id)}
    kept["head_measured"] = entry
    journal = Journal(state / JOURNAL_FILE)
    assert journal.add_exam(None, body, json.loads(json.dumps(kept)))
    journal.close()
    history = ExamHistory(state)
    try:
        page = report(history, session.exam_id)
        assert "<script>alert" not in page and "web-pin" not in page
        assert f"{half_up(body['biometry']['hc_mm'])} mm" in page
        listed = asyncio.run(history.recent(5, None))[0]
        assert [e["exam_id"] for e in listed] == [session.exam_id]
    finally:
        history.close()


# -- hostile ellipses ---------------------------------------------------------------------
@pytest.mark.parametrize("ellipse", [
    None, [], "ellipse", [1, 2, 3], [300, 200, 100, 80, 10, 0], {"cx": 1},
    [float("nan"), 200, 100, 80, 10], [300, 200, float("inf"), 80, 10],
    [1e300, 1e300, 1e300, 1e300, 1e300], [300, 200, -100, 80, 10], [300, 200, 0, 0, 0],
    [True, 200, 100, 80, 10], ["300", 200, 100, 80, 10],
    [-5000, 200, 100, 80, 10], [300, 90000, 100, 80, 10],  # centred off the frame
    [300, 200, 1e9, 1e9, 10],  # larger than the frame many times over
])
def test_an_ellipse_missing_damaged_or_off_the_frame_draws_no_measured_head(
        heads, tmp_path, ellipse):
    image, record, roi = heads[3]
    damaged = {**record, "biometry": {**record["biometry"], "ellipse": ellipse}}
    session, body = run_exam([(image, damaged, roi)], ThumbStore(tmp_path / "thumbs", 10**8))
    assert body["biometry"]["hc_mm"] == pytest.approx(record["biometry"]["hc_mm"])
    assert session.measured_head["frame"] == record["frame"]
    assert "thumbnail" not in session.measured_head
    assert not (tmp_path / "thumbs" / session.exam_id / MEASURED_NAME).exists()


def test_an_ellipse_running_past_the_frame_is_drawn_as_far_as_the_picture_goes(
        heads, tmp_path):
    image, record, roi = heads[3]
    cx, cy, a, b, angle = record["biometry"]["ellipse"]
    wide = [cx, cy, a * 3, b, angle]  # its sides off the picture, its centre on it
    damaged = {**record, "biometry": {**record["biometry"], "ellipse": wide}}
    session, _ = run_exam([(image, damaged, roi)], ThumbStore(tmp_path / "thumbs", 10**8))
    jpeg = cv2.imread(str(tmp_path / session.measured_head["thumbnail"]))
    assert jpeg is not None and len(yellow(jpeg)) > 50
