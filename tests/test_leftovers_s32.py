"""Leftovers of the fuzzing pass (fifth session of 5 December), each failing on the code
before its mend."""

from __future__ import annotations

import os

import pytest

from edge.fleet.keys import load_trusted_keys, new_keypair
from wire.fleet import MAX_TRUSTED_KEYS, BundleError


def _keys_folder(tmp_path, count: int):
    folder = tmp_path / "trusted"
    for k in range(count):
        new_keypair(tmp_path / "made", f"k{k:02d}")
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    for pub in sorted((tmp_path / "made").glob("*.pub")):
        (folder / pub.name).write_bytes(pub.read_bytes())
        os.chmod(folder / pub.name, 0o644)
    return folder


def test_as_many_trusted_keys_as_allowed_all_load(tmp_path):
    keys = load_trusted_keys(_keys_folder(tmp_path, MAX_TRUSTED_KEYS))
    assert [name for name, _ in keys] == [f"k{k:02d}" for k in range(MAX_TRUSTED_KEYS)]


def test_one_trusted_key_too_many_is_refused_naming_the_folder_not_dropped(tmp_path):
    """A 17th key, added for a rotation, was silently never trusted: a bundle signed with it
    was then refused as signed by an unknown key."""
    folder = _keys_folder(tmp_path, MAX_TRUSTED_KEYS + 1)
    with pytest.raises(BundleError) as refused:
        load_trusted_keys(folder, "--keys")
    line = str(refused.value)
    assert "\n" not in line and str(folder) in line and f"{MAX_TRUSTED_KEYS}" in line


LONG_PATH = "/tmp/" + "b" * 5000 + "/end.sqlite3"


@pytest.mark.parametrize("args", [
    ("report", "--db", LONG_PATH),
    ("serve", "--db", LONG_PATH),
    ("--mqtt-url", "mqtt://u@127.0.0.1:1", "--registry", LONG_PATH, "--duration-s", "1"),
    ("bundle", "export", LONG_PATH, "--group", "g", "--out", "/tmp/nowhere"),
], ids=["report-db", "serve-db", "collector-registry", "bundle-export"])
def test_a_5000_character_path_is_one_short_line_that_keeps_its_ends(args):
    """The district's commands echoed such a path whole, twice (10 kB lines)."""
    from tests.dashboard_harness import central

    proc = central(*args, timeout_s=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[:2000]
    assert len(lines[0]) < 400, lines[0][:400]
    assert "/tmp/bbb" in lines[0] and ("end.sqlite3" in lines[0] or "bbb..." in lines[0])


def test_an_os2_bitmap_is_sized_from_its_own_header_and_scored(tmp_path):
    """An OS/2 1.x BMP keeps its size in 16-bit fields; read as Windows ones they gave a
    3145792x1572865 image, refused as over the pixel budget."""
    import struct

    import numpy as np

    from edge.capture.images import decode_image_file

    w, h = 64, 48
    img = (np.arange(w * h * 3) % 251).astype(np.uint8).reshape(h, w, 3)
    row = (w * 3 + 3) // 4 * 4
    pixels = b"".join(img[h - 1 - y].tobytes() + b"\0" * (row - w * 3) for y in range(h))
    path = tmp_path / "os2.bmp"
    path.write_bytes(b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26)
                     + struct.pack("<IHHHH", 12, w, h, 1, 24) + pixels)
    decoded, problem = decode_image_file(path)
    assert problem is None
    assert decoded.shape[:2] == (h, w)


@pytest.mark.parametrize("top", [255, 1023, 4095, 65535])
def test_a_16_bit_png_keeps_its_picture_whatever_depth_its_values_use(tmp_path, top):
    """An 8-bit frame stored in a 16-bit PNG decoded black (only its top byte was kept);
    10- and 12-bit data came out at a sixty-fourth or a sixteenth of its brightness."""
    import cv2
    import numpy as np

    from edge.capture.images import decode_image_file

    ramp = np.tile(np.linspace(0, top, 256), (64, 1)).round().astype(np.uint16)
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), ramp)
    decoded, problem = decode_image_file(path)
    assert problem is None and decoded.dtype == np.uint8
    assert decoded.max() == 255 and decoded.min() == 0
    assert abs(float(decoded.mean()) - 127.5) < 1.0  # a ramp, not a black frame


def test_a_frames_record_is_a_deep_copy_equal_to_the_result_on_real_frames():
    """The record the journal, the exam and the page keep is the result as a JSON tree,
    rounded, and changing it (or anything nested in it) never touches the result."""
    import json
    from dataclasses import asdict

    from edge.capture.sources import open_source
    from edge.config import load_settings
    from edge.result import _rounded
    from edge.scorer import make_scorer, timed_frames

    scorer = make_scorer(load_settings(None, {"biometry": {"pixel_size_mm": 0.15}}))
    with open_source("demo") as source:
        results = [scorer.score(frame, capture_s)
                   for frame, capture_s in timed_frames(source, scorer.prepare_frame)]
    assert sum(r.biometry is not None for r in results) > 10
    assert sum(r.quality is not None for r in results) > 10
    for result in results:
        record = result.to_dict()
        assert record == _rounded(asdict(result))
        before = json.dumps(result.to_dict(), sort_keys=True)
        for key in ("quality", "biometry", "head"):
            if isinstance(record.get(key), dict):
                record[key].clear()
        if record["roi"] is not None:
            record["roi"].append(-1)
        assert json.dumps(result.to_dict(), sort_keys=True) == before


def test_a_16_bit_png_that_says_its_depth_is_scaled_by_it(tmp_path):
    """A 10-bit recording's frames, each with an sBIT chunk of 10: a dim frame keeps its
    dimness (scaled as 10-bit data), however bright its brightest pixel happens to be."""
    import zlib

    import numpy as np

    from edge.capture.images import decode_image_file

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))

    dim = np.full((64, 64), 200, np.uint16)  # 200 of 1023: a fifth of full scale
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in dim)
    header = (64).to_bytes(4, "big") * 2 + bytes([16, 0, 0, 0, 0])  # 16-bit grey
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"sBIT", bytes([10]))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path = tmp_path / "ten_bit.png"
    path.write_bytes(png)
    decoded, problem = decode_image_file(path)
    assert problem is None
    assert abs(int(decoded.mean()) - round(200 * 255 / 1023)) <= 1  # 50, not 200
