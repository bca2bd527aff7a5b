"""`sonoedge biometry` and head biometry in `score` and `run`, as a user runs them.

Real processes, the shipped head segmenter and real HC18 frames of patients the segmenter
never trained on (quantize.data's patient split, seed 0). Bad input is one line naming the
file (and line), never a traceback, and rows already written are kept.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_run import one_line_error, sonoedge
from tests.conftest import MODELS, REPO

SEGMENTER = "head_segmenter"
COLUMNS = ["filename", "hc_mm", "bpd_mm", "ofd_mm", "ga_weeks", "status", "plane"]
STATUSES = {"ok", "ga_out_of_range", "no_head", "several_heads", "head_cut_off", "poor_fit",
            "pixel_size_missing", "pixel_size_absurd", "unreadable_image"}
# Held-out HC18 frames (patients the segmenter never trained on), HC 73-284 mm; 186_HC's
# annotated head runs 14 px past the image edge.
HELD_OUT = ("024_HC.png", "186_HC.png", "200_HC.png", "304_HC.png", "424_HC.png",
            "552_HC.png", "710_HC.png")


def _refused(proc, *needles: str) -> None:
    """One error line naming `needles`, and exit status 2 (bad input, nothing measured)."""
    one_line_error(proc, *needles)
    assert proc.returncode == 2






def _read(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == COLUMNS
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows[1:]]


@pytest.fixture()
def hc18_csv(data_dir) -> Path:
    return data_dir / "hc18" / "training_set_pixel_size_and_HC.csv"


@pytest.fixture()
def truth(hc18_csv) -> dict[str, tuple[float, float]]:
    with open(hc18_csv, newline="") as handle:
        return {row["filename"]: (float(row["pixel size(mm)"]),
                                  float(row["head circumference (mm)"]))
                for row in csv.DictReader(handle)}


@pytest.fixture()
def heads(tmp_path, data_dir) -> Path:
    folder = tmp_path / "heads"
    folder.mkdir()
    for name in HELD_OUT:
        shutil.copy(data_dir / "hc18" / "images" / name, folder / name)
    return folder


def test_a_folder_of_held_out_heads_gets_one_row_each(tmp_path, heads, hc18_csv, truth):
    good = (heads / "200_HC.png").read_bytes()
    (heads / "300_cut.png").write_bytes(good[: len(good) // 3])  # does not decode
    shutil.copy(heads / "424_HC.png", heads / "999_unlisted.png")  # not in the CSV
    (heads / "notes.txt").write_text("not an image")
    out = tmp_path / "out.csv"
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(hc18_csv), "--out", str(out))
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1  # one image did not decode: a script can tell
    rows = _read(out)
    names = [row["filename"] for row in rows]
    assert names == sorted([*HELD_OUT, "300_cut.png", "999_unlisted.png"])
    by_name = {row["filename"]: row for row in rows}
    assert by_name["300_cut.png"]["status"] == "unreadable_image"
    assert by_name["999_unlisted.png"]["status"] == "pixel_size_missing"
    assert by_name["999_unlisted.png"]["hc_mm"] == ""
    assert all(row["status"] in STATUSES for row in rows)
    measured = [row for row in rows if row["status"] in ("ok", "ga_out_of_range")]
    assert len(measured) >= 3, rows
    for row in measured:
        hc = float(row["hc_mm"])
        assert abs(hc - truth[row["filename"]][1]) < 0.1 * truth[row["filename"]][1], row
        assert float(row["bpd_mm"]) <= float(row["ofd_mm"])
        assert (row["ga_weeks"] == "") == (row["status"] == "ga_out_of_range")
    cut = by_name["186_HC.png"]  # never a short HC: flagged, or measured right
    assert cut["status"] == "head_cut_off" or abs(float(cut["hc_mm"]) - 130.5) < 13.0, cut
    for row in rows:
        if row["status"] not in ("ok", "ga_out_of_range"):
            assert row["hc_mm"] == row["bpd_mm"] == row["ofd_mm"] == row["ga_weeks"] == ""
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"biometry: {len(rows)} images: ")
    assert "1 unreadable_image" in summary and "1 pixel_size_missing" in summary
    assert by_name["300_cut.png"]["plane"] == ""  # nothing to name
    # every head is named, as the live path names it; an early head may look like nothing
    # (024_HC, 69 mm: Background): 11 of HC18's 937 heads are named another plane
    assert all(row["plane"] for row in rows if row["status"] != "unreadable_image")
    assert sum(row["plane"] in ("Brain (Tv.)", "Brain (Cb.)") for row in rows) >= 6, rows


def test_an_abdomen_or_a_cord_among_the_heads_is_named_so_the_user_can_check_its_hc(
        tmp_path, heads, data_dir):
    """The segmenter outlines any oval: an abdomen gets an HC as well as a skull does. The
    row names the plane the plane model sees, and the summary counts those that are not a
    head plane."""
    others = ("Patient01689_Plane2_1_of_1.png", "3Vcord_4_20230521_12_15_54.jpg")
    for name in others:
        shutil.copy(data_dir / "planes" / "images" / name, heads / name)
    sizes = tmp_path / "sizes.csv"
    sizes.write_text("filename,pixel size(mm)\n" + "".join(
        f"{p.name},0.15\n" for p in sorted(heads.iterdir())))
    out = tmp_path / "out.csv"
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(sizes), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    by_name = {row["filename"]: row for row in _read(out)}
    named = {by_name[name]["plane"] for name in others}
    assert not named & {"Brain (Tv.)", "Brain (Cb.)"}, named
    assert by_name["Patient01689_Plane2_1_of_1.png"]["plane"] == "Abdominal"
    flagged = sum(row["plane"] not in ("Brain (Tv.)", "Brain (Cb.)", "uncertain")
                  for row in by_name.values())
    assert flagged >= 1
    summary = proc.stdout.strip().splitlines()[-1]
    assert f"names {flagged} of them another plane than a head plane" in summary, summary


def test_a_pixel_size_csv_with_only_the_two_columns_and_an_absurd_value(tmp_path, heads):
    sizes = tmp_path / "sizes.csv"
    sizes.write_text("filename,pixel size(mm)\n200_HC.png,5.0\n424_HC.png,0.0\n")
    out = tmp_path / "out.csv"
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(sizes), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    statuses = {row["filename"]: row["status"] for row in _read(out)}
    assert statuses["200_HC.png"] == "pixel_size_absurd"
    assert statuses["424_HC.png"] == "pixel_size_missing"
    assert statuses["024_HC.png"] == "pixel_size_missing"


@pytest.mark.parametrize(("text", "needle"), [
    ("name,pixel size(mm)\n200_HC.png,0.1\n", "sizes.csv:1"),
    ("filename,pixel size(mm)\n200_HC.png,0.1\n420_HC.png,abc\n", "sizes.csv:3"),
    ("filename,pixel size(mm),head circumference (mm)\n200_HC.png\n", "sizes.csv:2"),
    ("filename,pixel size(mm)\n200_HC.png,0.1\n200_HC.png,0.2\n", "sizes.csv:3"),
    ("", "sizes.csv: empty"),
])
def test_a_malformed_pixel_size_csv_is_one_line_naming_file_and_line(tmp_path, heads, text,
                                                                    needle):
    sizes = tmp_path / "sizes.csv"
    sizes.write_text(text)
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(sizes),
                    "--out", str(tmp_path / "out.csv"))
    _refused(proc, needle)


@pytest.mark.parametrize(("data", "needle"), [
    (b"filename,pixel size(mm)\n", "sizes.csv: no rows"),
    (b"filename,pixel size(mm),pixel size(mm)\n200_HC.png,0.1,0.2\n", "sizes.csv:1"),
    (b"filename,pixel size(mm)\n200_HC.png,0,12\n", "sizes.csv:2"),  # a decimal comma
    (b"filename,pixel size(mm)\n../200_HC.png,0.1\n", "sizes.csv:2"),
    (b"filename,pixel size(mm)\n/abs/200_HC.png,0.1\n", "sizes.csv:2"),
    (b"filename,pixel size(mm)\n200_HC.png\x00,0.1\n", "sizes.csv:2"),
    ("filename,pixel size(mm)\n200_HC.png,0.1\n".encode("utf-16"), "sizes.csv:1"),
    (b"filename,pixel size(mm)\n200_HC.png,0.1\n\xe9t\xe9.png,0.1\n", "sizes.csv:3"),
    (b"filename,pixel size(mm)\n200_HC.png," + b"9x" * 50_000 + b"\n", "sizes.csv:2"),
    (b"," * 60_000 + b"\n200_HC.png,0.1\n", "sizes.csv:1"),
], ids=["header-only", "column-twice", "row-longer", "dotdot", "absolute", "nul", "utf16",
        "latin1", "long-cell", "long-header"])
def test_a_pixel_size_csv_that_could_be_misread_is_one_short_line_naming_file_and_line(
        tmp_path, heads, data, needle):
    """No rows, a column twice, a row longer than its header, a name that can never match a
    file in the folder, text that is not UTF-8: each would have measured with no pixel size
    or a guessed one. A 100 kB cell is quoted, not copied, into the line."""
    sizes = tmp_path / "sizes.csv"
    sizes.write_bytes(data)
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(sizes),
                    "--out", str(tmp_path / "out.csv"))
    _refused(proc, needle)
    assert len(proc.stderr.strip().splitlines()[-1]) < 300
    assert not (tmp_path / "out.csv").exists()


def test_a_pixel_size_csv_too_big_a_fifo_or_a_folder_is_refused_without_reading_it(
        tmp_path, heads):
    big = tmp_path / "big.csv"
    with open(big, "w") as handle:
        handle.write("filename,pixel size(mm)\n")
        handle.writelines(f"{n:07d}_HC.png,0.1\n" for n in range(300_000))  # 6 MB
    _refused(sonoedge("biometry", str(heads), "--pixel-sizes", str(big),
                      "--out", str(tmp_path / "out.csv")), "big.csv", "MiB")
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)  # opening it would wait for a writer for ever
    _refused(sonoedge("biometry", str(heads), "--pixel-sizes", str(fifo),
                      "--out", str(tmp_path / "out.csv"), timeout=60),
             "fifo.csv", "not a regular file")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    _refused(sonoedge("biometry", str(heads), "--pixel-sizes", str(folder),
                      "--out", str(tmp_path / "out.csv")), "folder.csv", "a folder")


def test_out_that_is_an_input_is_refused_before_anything_is_emptied(tmp_path, heads,
                                                                     hc18_csv):
    image = heads / "200_HC.png"
    before = image.read_bytes()
    _refused(sonoedge("biometry", str(heads), "--pixel-sizes", str(hc18_csv),
                      "--out", str(image)), "200_HC.png", "is an input")
    assert image.read_bytes() == before
    sizes = tmp_path / "sizes.csv"
    shutil.copy(hc18_csv, sizes)
    _refused(sonoedge("biometry", str(heads), "--pixel-sizes", str(sizes),
                      "--out", str(sizes)), "sizes.csv", "is an input")
    assert sizes.read_bytes() == hc18_csv.read_bytes()


def test_a_full_disk_is_one_line_and_the_rows_written_before_it_stay(
        tmp_path, heads, hc18_csv, monkeypatch, capsys):
    import errno

    from edge.cli import biometry as biometry_cli
    from edge.cli.main import main

    class FillsUp:
        """The output file on a disk with room for the header and two rows."""

        def __init__(self, handle):
            self.handle = handle
            self.lines = 0

        def write(self, text):
            if self.lines >= 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.lines += text.count("\n")
            return self.handle.write(text)

        def flush(self):
            self.handle.flush()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def opened(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        return FillsUp(handle) if "w" in mode else handle

    monkeypatch.setattr(biometry_cli, "open", opened, raising=False)
    out = tmp_path / "out.csv"
    assert main(["biometry", str(heads), "--pixel-sizes", str(hc18_csv),
                 "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "out.csv" in errors[0] and "No space left" in errors[0]
    assert "after 2 of 7 rows" in errors[0], errors[0]
    rows = _read(out)
    assert [row["filename"] for row in rows] == sorted(HELD_OUT)[:2]


def test_an_image_over_the_pixel_budget_is_unreadable_and_never_decoded(tmp_path, heads,
                                                                      hc18_csv):
    """`[source] max_frame_pixels` holds here as in `score`: HC18's 800x540 frames are over
    a 0.3 MP budget (a 424 kB PNG of 20000x20000 took 2.4 GB to decode)."""
    config = tmp_path / "device.toml"
    config.write_text("[source]\nmax_frame_pixels = 300000\n")
    out = tmp_path / "out.csv"
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(hc18_csv), "--out", str(out),
                    "--config", str(config))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert {row["status"] for row in _read(out)} == {"unreadable_image"}


def test_a_pipe_a_broken_link_and_a_cut_jpeg_each_get_a_row_and_a_line_saying_why(
        tmp_path, heads, hc18_csv):
    """A pipe named like an image was left out without a word (the count one short, while
    `score` named it), and an unreadable image's reason was lost: its row says only
    `unreadable_image`. Each now has its row and one line naming it and why."""
    os.mkfifo(heads / "pipe.png")
    (heads / "gone.png").symlink_to(tmp_path / "nowhere.png")
    data = (heads / "200_HC.png").read_bytes()
    import cv2
    import numpy as np
    jpeg = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(data, np.uint8), 0))[1].tobytes()
    (heads / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2] + b"\xff\xd9")
    (heads / "folder.png").mkdir()  # a folder named like an image is no image
    out = tmp_path / "out.csv"
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(hc18_csv), "--out", str(out))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    rows = {row["filename"]: row["status"] for row in _read(out)}
    assert len(rows) == len(HELD_OUT) + 3 and "folder.png" not in rows
    assert {rows[n] for n in ("pipe.png", "gone.png", "cut.jpg")} == {"unreadable_image"}
    said = proc.stderr.strip().splitlines()
    assert "sonoedge: pipe.png: not a regular file" in said, said
    assert "sonoedge: cut.jpg: cannot decode image (corrupt JPEG: premature end of data " \
           "segment)" in said, said
    assert any(line.startswith("sonoedge: gone.png: ") for line in said), said
    assert f"{len(HELD_OUT) + 3} images" in proc.stdout


def test_an_image_whose_name_is_not_utf8_gets_its_row(tmp_path, heads, hc18_csv):
    shutil.copy(heads / "200_HC.png", os.fsdecode(bytes(heads) + b"/\xff_HC.png"))
    out = tmp_path / "out.csv"
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(hc18_csv), "--out", str(out))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = {row["filename"]: row["status"] for row in _read(out)}
    assert rows["\\xff_HC.png"] == "pixel_size_missing"
    assert len(rows) == len(HELD_OUT) + 1


def test_missing_inputs_and_a_missing_model_are_named(tmp_path, heads, hc18_csv, models_copy):
    out = str(tmp_path / "out.csv")
    proc = sonoedge("biometry", str(tmp_path / "nowhere"), "--pixel-sizes", str(hc18_csv),
                    "--out", out)
    _refused(proc, "nowhere", "not a folder")
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(tmp_path / "none.csv"),
                    "--out", out)
    _refused(proc, "none.csv", "not found")
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(hc18_csv),
                    "--out", str(tmp_path / "no" / "out.csv"))
    _refused(proc, "out.csv", "folder does not exist")
    for path in models_copy.glob(f"{SEGMENTER}.*"):
        path.unlink()
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(hc18_csv), "--out", out,
                    "--models", str(models_copy))
    _refused(proc, f"{SEGMENTER}.json", "not found")


def test_a_damaged_segmenter_is_refused(tmp_path, heads, hc18_csv, models_copy):
    model = models_copy / f"{SEGMENTER}.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    proc = sonoedge("biometry", str(heads), "--pixel-sizes", str(hc18_csv),
                    "--out", str(tmp_path / "out.csv"), "--models", str(models_copy))
    _refused(proc, f"{SEGMENTER}.tflite", "sha256")


def test_rows_written_before_a_kill_are_kept(tmp_path, data_dir, hc18_csv):
    folder = tmp_path / "many"
    folder.mkdir()
    for path in sorted((data_dir / "hc18" / "images").glob("*.png"))[:200]:
        os.symlink(path, folder / path.name)
    out = tmp_path / "out.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "biometry", str(folder),
                             "--pixel-sizes", str(hc18_csv), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                            env=env)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if out.exists() and out.read_text().count("\n") >= 6:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    lines = out.read_text().splitlines()
    assert len(lines) >= 6 and lines[0] == ",".join(COLUMNS)
    complete = [line for line in lines[1:] if len(line.split(",")) == len(COLUMNS)]
    assert len(complete) >= len(lines) - 2  # at most the row being written is partial
    names = [line.split(",")[0] for line in complete]
    assert names == sorted(p.name for p in folder.iterdir())[: len(names)]


def test_score_adds_biometry_to_head_plane_frames_when_the_pixel_size_is_known(
        tmp_path, heads, data_dir):
    shutil.copy(data_dir / "sononet" / "examples" / "FEMUR.tiff", heads / "900_femur.tiff")
    proc = sonoedge("score", "--pixel-size", "0.15", str(heads))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == len(HELD_OUT) + 1
    for line in lines:
        head_plane = line["plane"] in ("Brain (Tv.)", "Brain (Cb.)")
        assert (line["biometry"] is not None) == head_plane, line
        if head_plane:
            assert line["biometry"]["status"] in STATUSES
            assert line["biometry"]["pixel_size_mm"] == 0.15 and line["biometry"]["ms"] > 0
    assert lines[-1]["plane"] == "Femur" and lines[-1]["biometry"] is None
    assert any(line["biometry"] and line["biometry"]["hc_mm"] for line in lines)
    plain = sonoedge("score", str(heads / "200_HC.png"))
    unmeasured = json.loads(plain.stdout)["biometry"]  # no pixel size: why, and no figures
    assert unmeasured["status"] == "pixel_size_missing" and unmeasured["hc_mm"] is None


def test_run_journals_biometry_from_the_configured_pixel_size(tmp_path, heads):
    config = tmp_path / "device.toml"
    config.write_text("[biometry]\npixel_size_mm = 0.15\n")
    state = tmp_path / "state"
    proc = sonoedge("run", "--config", str(config), "--source", str(heads),
                    "--state-dir", str(state))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    db = sqlite3.connect(state / "journal.sqlite")
    rows = db.execute("SELECT plane, biometry_status, hc_mm, record FROM results").fetchall()
    assert len(rows) == len(HELD_OUT)
    for plane, status, hc, record in rows:
        head_plane = plane in ("Brain (Tv.)", "Brain (Cb.)")
        assert (status is not None) == head_plane
        assert (json.loads(record)["biometry"] is not None) == head_plane
        if status in ("ok", "ga_out_of_range"):
            assert hc > 0
    assert any(status is not None for _, status, _, _ in rows)
    (models,) = db.execute("SELECT models FROM runs").fetchone()
    assert SEGMENTER in json.loads(models)
    assert any("HC " in line or "biometry: " in line for line in proc.stdout.splitlines())


def test_the_shipped_segmenter_manifest_is_a_head_segmenter():
    from edge.models.biometry import check_segmenter, settings_for_model
    from edge.models.manifest import find_manifest, verify

    manifest = find_manifest(MODELS, SEGMENTER)
    verify(manifest)
    check_segmenter(manifest)
    assert manifest.task == "head_segmentation" and manifest.output_kind == "logits"
    assert manifest.input_shape[:2] == (1, 1)
    assert 0 < settings_for_model(manifest).probability_threshold < 1
