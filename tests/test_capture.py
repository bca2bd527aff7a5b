"""Capture, specified on real files: real ultrasound frames copied into tmp dirs, truncated
copies of them, and real videos written with cv2.VideoWriter. The live grabber runs with a
real cv2.VideoCapture on such a video: end of file is what an unplugged dongle looks like.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.demo import default_data_dir
from edge.capture.images import decode_image_file
from edge.capture.sources import (
    Frame,
    LiveSettings,
    LiveSource,
    Source,
    SourceError,
    open_source,
    open_sources,
    read_ahead,
)
from tests.waits import raised_within

DATA = default_data_dir()
HC_PNG = DATA / "hc18" / "images" / "000_HC.png"
TIFF = DATA / "sononet" / "examples" / "4CH.tiff"
PLANES = DATA / "planes" / "images"
needs_data = pytest.mark.skipif(not (HC_PNG.exists() and TIFF.exists() and PLANES.is_dir()),
                                reason=f"real data not found under {DATA}")


def _real_jpg() -> Path:
    return sorted(PLANES.glob("*.jpg"))[0]


def _truncate(src: Path, dst: Path, frac: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


def _write_video(path: Path, n: int, fps: float = 30.0, size: tuple[int, int] = (160, 120)):
    """Frame i is flat grey 10 + 4*i, so the index survives MJPG compression."""
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert wr.isOpened()
    for i in range(n):
        wr.write(np.full((size[1], size[0], 3), 10 + 4 * i, np.uint8))
    wr.release()
    return path


def _index_of(img: np.ndarray) -> int:
    return int(round((float(img.mean()) - 10) / 4))


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------- files


@needs_data
def test_folder_sorted_skips_non_images_and_reports_corrupt_files_then_goes_on(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    shutil.copy(_real_jpg(), d / "a_001.jpg")
    shutil.copy(HC_PNG, d / "b_002.png")
    _truncate(HC_PNG, d / "c_003.png")
    _truncate(_real_jpg(), d / "d_004.jpg")
    shutil.copy(TIFF, d / "e_005.tiff")
    (d / "f_006.png").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    # a copy whose image went missing, and a pipe named like an image (reading it would
    # wait for ever): each is a frame that says so, never skipped without a word
    (d / "g_007.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(d / "h_008.jpg")
    (d / "i_009.png").mkdir()  # a folder named like an image is not a frame

    with open_source(d) as src:
        frames = list(src)

    assert [f.source for f in frames] == ["a_001.jpg", "b_002.png", "c_003.png", "d_004.jpg",
                                          "e_005.tiff", "f_006.png", "g_007.png", "h_008.jpg"]
    assert [f.index for f in frames] == list(range(8))
    ok = {f.source: f for f in frames if f.ok}
    assert ok["a_001.jpg"].image.shape == (480, 640, 3)
    assert ok["b_002.png"].image.shape == (540, 800)  # greyscale stays HxW
    assert ok["e_005.tiff"].image.shape == (735, 975, 3)
    assert all(f.image.dtype == np.uint8 for f in ok.values())
    for name in ("c_003.png", "d_004.jpg", "f_006.png", "g_007.png", "h_008.jpg"):
        bad = next(f for f in frames if f.source == name)
        assert bad.image is None and not bad.ok
        assert name in bad.error and "\n" not in bad.error
    assert "not a regular file" in next(f for f in frames if f.source == "h_008.jpg").error


@needs_data
def test_truncated_tiff_and_garbage_bytes_give_a_reason_not_an_exception(tmp_path):
    img, err = decode_image_file(_truncate(TIFF, tmp_path / "cut.tiff", 0.9))
    assert img is None and "cut.tiff" in err
    (tmp_path / "junk.bmp").write_bytes(b"BM not really a bitmap")
    img, err = decode_image_file(tmp_path / "junk.bmp")
    assert img is None and "junk.bmp" in err


@needs_data
def test_a_cut_jpeg_with_its_end_marker_glued_back_is_refused_not_scored_half_grey(tmp_path):
    """OpenCV decoded it without a word, the lost half grey, and the frame was scored; the
    end marker, which the first check looks for, is there."""
    data = _real_jpg().read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[:len(data) // 2] + b"\xff\xd9")
    img, err = decode_image_file(tmp_path / "half.jpg")
    assert img is None and "\n" not in err
    assert err == "half.jpg: cannot decode image (corrupt JPEG: premature end of data segment)"
    # named .png, it is still read as the JPEG it is
    (tmp_path / "half.png").write_bytes(data[:len(data) // 2] + b"\xff\xd9")
    assert decode_image_file(tmp_path / "half.png")[0] is None
    with open_source(str(tmp_path / "half.jpg")) as src:
        frame, = list(src)
    assert not frame.ok and "corrupt JPEG" in frame.error


@needs_data
def test_whole_jpegs_decode_to_opencv_s_own_pixels_in_colour_and_grey(tmp_path):
    for path in sorted(PLANES.glob("*.jpg"))[:3]:
        img, err = decode_image_file(path)
        assert err is None
        assert np.array_equal(img, cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)), path.name
    grey = cv2.imread(str(HC_PNG), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(tmp_path / "grey.jpg"), grey)
    img, err = decode_image_file(tmp_path / "grey.jpg")
    assert err is None and img.shape == grey.shape and img.dtype == np.uint8
    assert np.array_equal(img, cv2.imread(str(tmp_path / "grey.jpg"), cv2.IMREAD_ANYCOLOR))
    # a CMYK JPEG (a print workflow's export) is read by OpenCV, and refused when cut
    from PIL import Image as pil  # the toolchain's (matplotlib's): never skipped
    pil.fromarray(cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)).convert("CMYK").save(
        tmp_path / "cmyk.jpg")
    img, err = decode_image_file(tmp_path / "cmyk.jpg")
    assert err is None and img.shape == grey.shape + (3,)
    data = (tmp_path / "cmyk.jpg").read_bytes()
    (tmp_path / "cmyk_cut.jpg").write_bytes(data[:len(data) // 2] + b"\xff\xd9")
    assert "corrupt JPEG" in decode_image_file(tmp_path / "cmyk_cut.jpg")[1]
    # a phone's photo of the screen, taken upright: turned by its EXIF orientation, as
    # OpenCV turns it (simplejpeg, which checks the data, does not)
    photo = pil.fromarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB))
    exif = pil.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    photo.save(tmp_path / "upright.jpg", exif=exif)
    img, err = decode_image_file(tmp_path / "upright.jpg")
    assert err is None and img.shape == (grey.shape[1], grey.shape[0], 3)
    assert np.array_equal(img, cv2.imread(str(tmp_path / "upright.jpg"), cv2.IMREAD_ANYCOLOR))


@needs_data
def test_single_image_file_is_one_frame_named_by_basename(tmp_path):
    p = tmp_path / "head.png"
    shutil.copy(HC_PNG, p)
    frames = list(open_source(str(p)))
    assert len(frames) == 1
    f = frames[0]
    assert isinstance(f, Frame) and f.ok and f.source == "head.png" and f.index == 0
    assert f.t_mono <= time.monotonic() and f.t_wall > 1e9
    with pytest.raises(AttributeError):
        f.index = 3  # frozen


def test_sixteen_bit_png_comes_out_as_uint8(tmp_path):
    p = tmp_path / "deep.png"
    cv2.imwrite(str(p), np.full((40, 60), 40000, np.uint16))
    img, err = decode_image_file(p)
    assert err is None and img.dtype == np.uint8 and img.shape == (40, 60)


def test_empty_folder_missing_path_and_unsupported_type_raise_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError) as e:
        open_source(empty)
    assert "empty folder" in _one_line(e.value) and str(empty) in str(e.value)

    only_txt = tmp_path / "only_txt"
    only_txt.mkdir()
    (only_txt / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no .* files in this folder; it holds 1 other file"):
        open_source(only_txt)

    # The frames one level down, as in FETAL_PLANES_DB's planes/images: the line says where.
    nested = tmp_path / "planes"
    (nested / "images").mkdir(parents=True)
    shutil.copy(TIFF, nested / "images" / "y.tiff")
    (nested / "labels.csv").write_text("x")
    with pytest.raises(SourceError) as e:
        open_source(nested)
    assert "1 other file(s) and sub-folder(s) images/ (not read" in _one_line(e.value)

    # A link round in a loop, or to nothing, is not "no such file".
    (tmp_path / "loop_a.png").symlink_to(tmp_path / "loop_b.png")
    (tmp_path / "loop_b.png").symlink_to(tmp_path / "loop_a.png")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    for link in ("loop_a.png", "dangling.mp4"):
        with pytest.raises(SourceError) as e:
            open_source(tmp_path / link)
        assert "a link that leads nowhere" in _one_line(e.value) and link in str(e.value)

    with pytest.raises(SourceError) as e:
        open_source(tmp_path / "nope.png")
    assert "nope.png" in _one_line(e.value)

    txt = tmp_path / "notes.txt"
    txt.write_text("x")
    with pytest.raises(SourceError) as e:
        open_source(txt)
    assert "unsupported" in _one_line(e.value) and ".txt" in str(e.value)



@pytest.mark.parametrize(("spec", "needles"), [
    ("", ("source spec is empty", "--source")),  # Path("") would read the current folder
    ("a" * 5000, ("File name too long",)),  # was an OSError traceback
    ("v4l2:" + "a" * 5000, ("not a V4L2 device", "v4l2:0", "v4l2:/dev/video0")),
    ("v4l2:" + "9" * 5000, ("v4l2:/dev/video99", "no such device")),  # a number: said so
    ("picamera2:\u00b2", ("picamera2:\u00b2", "camera number")),  # int() raised on it
    ("clinic\nframes", ("clinic\\x0aframes", "no such file")),  # was two lines
    ("picamera2:\n1", ("picamera2:\\x0a1", "camera number")),
])
def test_a_hostile_source_spec_is_one_short_line_naming_it(spec, needles):
    with pytest.raises(SourceError) as e:
        open_source(spec)
    line = _one_line(e.value)
    assert len(line) < 400, line
    for needle in needles:
        assert needle in line, line


def test_a_pipe_named_like_a_video_is_refused_not_waited_on(tmp_path):
    """A FIFO called clip.mp4 made the decoder wait for a writer forever, before the loop
    (and its watchdog) had started."""
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    caught = raised_within(lambda: open_source(fifo).close(), SourceError)
    assert "clip.mp4: not a regular file" in _one_line(caught)


# --------------------------------------------------------------------------- video


def test_video_file_yields_every_frame_in_order(tmp_path):
    p = _write_video(tmp_path / "clip.avi", 20)
    with open_source(p) as src:
        frames = list(src)
    assert [f.index for f in frames] == list(range(20))
    assert all(f.ok and f.source == "clip.avi" for f in frames)
    assert [_index_of(f.image) for f in frames] == list(range(20))
    assert all(a.t_mono <= b.t_mono for a, b in zip(frames, frames[1:], strict=False))


def test_truncated_video_ends_cleanly_with_fewer_frames(tmp_path):
    full = _write_video(tmp_path / "full.avi", 30)
    cut = _truncate(full, tmp_path / "cut.avi", 0.5)
    try:
        src = open_source(cut)
    except SourceError as e:  # some demuxers refuse the file outright: also fine
        assert "cut.avi" in _one_line(e)
        return
    frames = list(src)
    good = [f for f in frames if f.ok]
    assert 0 < len(good) < 30
    assert all(f.error is None for f in frames[:-1])
    if frames[-1].error:
        assert "cut.avi" in frames[-1].error and "\n" not in frames[-1].error


def test_corrupt_video_raises_source_error(tmp_path):
    p = tmp_path / "bad.mp4"
    p.write_bytes(b"\x00" * 4096)
    with pytest.raises(SourceError) as e:
        open_source(p)
    assert "bad.mp4" in _one_line(e.value)


def test_paced_video_skips_late_frames_instead_of_falling_behind(tmp_path):
    p = _write_video(tmp_path / "live_like.avi", 30, fps=30.0)
    t0 = time.monotonic()
    with open_source(p, pace=True) as src:
        got = []
        for f in src:
            got.append(f.index)
            time.sleep(0.1)  # a slow model: 10 fps against a 30 fps file
    assert time.monotonic() - t0 < 5
    assert src.dropped > 0 and len(got) + src.dropped <= 30
    assert got == sorted(set(got)) and got[-1] >= 25


# --------------------------------------------------------------------------- many paths


@needs_data
def test_open_sources_chains_in_order_and_reports_bad_paths_inline(tmp_path):
    img = tmp_path / "one.png"
    shutil.copy(HC_PNG, img)
    folder = tmp_path / "dir"
    folder.mkdir()
    shutil.copy(_real_jpg(), folder / "x.jpg")
    shutil.copy(TIFF, folder / "y.tiff")
    empty = tmp_path / "empty"
    empty.mkdir()
    vid = _write_video(tmp_path / "v.avi", 5)
    missing = tmp_path / "missing.png"

    frames = list(open_sources([img, folder, missing, empty, vid]))
    assert [f.source for f in frames] == ["one.png", "x.jpg", "y.tiff", "missing.png",
                                          "empty", "v.avi", "v.avi", "v.avi", "v.avi", "v.avi"]
    bad = [f for f in frames if f.error]
    assert [f.index for f in bad] == [-1, -1]
    assert "missing.png" in bad[0].error and "empty folder" in bad[1].error
    assert sum(f.ok for f in frames) == 8

    with pytest.raises(SourceError, match="missing.png"):
        open_sources([img, missing], strict=True)
    with pytest.raises(SourceError):
        open_sources([])


# --------------------------------------------------------------------------- live


def _file_opener(path: Path, calls: list[float]):
    def opener():
        calls.append(time.monotonic())
        return cv2.VideoCapture(str(path))

    return opener


def test_live_grabber_keeps_only_the_latest_frame(tmp_path):
    p = _write_video(tmp_path / "dongle.avi", 60)
    calls: list[float] = []
    s = LiveSettings(backoff_initial_s=0.01, backoff_max_s=0.02, max_reopen_attempts=0,
                     poll_s=0.01)
    src = LiveSource("test:dongle", _file_opener(p, calls), s)
    got: list[Frame] = []
    deadline = time.monotonic() + 10
    for f in src:
        got.append(f)
        time.sleep(0.03)  # slower than the grabber: stale frames must be dropped
        assert time.monotonic() < deadline
    src.close()

    idx = [f.index for f in got]
    assert idx == sorted(set(idx))  # never an old frame after a newer one
    assert src.dropped > 0
    assert len(got) + src.dropped == src.frames_grabbed == 60
    assert idx[-1] == 59  # the newest frame at the end is delivered, not lost
    assert all(_index_of(f.image) == f.index for f in got)  # image belongs to its index
    assert "giving up" in src.end_reason
    assert len(calls) == 1 and src.reopens == 0


def test_live_grabber_reopens_with_bounded_exponential_backoff(tmp_path):
    """Two replugs that work, then the device is gone: 3 attempts, then a clean end."""
    p = _write_video(tmp_path / "dongle.avi", 5)
    calls: list[float] = []

    def opener():
        calls.append(time.monotonic())
        # first three opens find the "device", later ones a path that is not there
        return cv2.VideoCapture(str(p if len(calls) <= 3 else tmp_path / "unplugged.avi"))

    s = LiveSettings(backoff_initial_s=0.05, backoff_max_s=0.1, max_reopen_attempts=3,
                     poll_s=0.01)
    t0 = time.monotonic()
    with LiveSource("test:replug", opener, s) as src:
        got = [f.index for f in src]
    assert time.monotonic() - t0 < 10

    assert src.reopens == 2
    assert len(calls) == 6  # 1 open + 2 good reopens + 3 failed attempts
    # backoff resets after each good reopen, doubles while failing, capped at backoff_max_s
    assert list(src.delays) == [0.05, 0.05, 0.05, 0.1, 0.1]
    gaps = np.diff(calls[3:])
    assert gaps[0] >= 0.1 * 0.9 and gaps[1] >= 0.1 * 0.9
    assert got == sorted(set(got)) and len(got) >= 3  # frames from each plug-in
    assert "giving up after 3 reopen attempts" in src.end_reason


def test_close_ends_a_live_source_that_would_reopen_forever(tmp_path):
    p = _write_video(tmp_path / "loop.avi", 3)
    calls: list[float] = []
    s = LiveSettings(backoff_initial_s=0.01, backoff_max_s=0.02, max_reopen_attempts=None,
                     poll_s=0.01)
    src = LiveSource("test:forever", _file_opener(p, calls), s)
    deadline = time.monotonic() + 10
    n = 0
    for _ in src:
        n += 1
        if src.reopens >= 2:
            src.close()
        assert time.monotonic() < deadline
    assert src.reopens >= 2 and n >= 1
    assert not src._thread.is_alive()
    assert "closed" in src.end_reason


@pytest.mark.parametrize("spec", ["v4l2:/dev/video99", "v4l2:99", "/dev/video99"])
def test_absent_v4l2_device_is_a_one_line_source_error(spec):
    with pytest.raises(SourceError) as e:
        open_source(spec)
    assert "/dev/video99" in _one_line(e.value)


def test_absent_v4l2_device_with_wait_ends_after_bounded_attempts():
    """The real V4L2 opener, against a device that never appears."""
    s = LiveSettings(backoff_initial_s=0.02, backoff_max_s=0.04, max_reopen_attempts=2,
                     wait_for_device=True, poll_s=0.01)
    t0 = time.monotonic()
    with open_source("v4l2:/dev/video99", live=s) as src:
        frames = list(src)
    assert frames == [] and time.monotonic() - t0 < 10
    assert src.name == "v4l2:/dev/video99" and src.open_attempts == 3
    assert "giving up" in src.end_reason


def test_missing_picamera2_is_a_clear_source_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails as on a non-Pi box
    for spec in ("picamera2", "picamera2:1"):
        with pytest.raises(SourceError) as e:
            open_source(spec)
        assert "picamera2 is not installed" in _one_line(e.value)
    with pytest.raises(SourceError, match="integer"):
        open_source("picamera2:front")


def test_live_settings_are_validated():
    with pytest.raises(ValueError):
        LiveSettings(backoff_initial_s=2, backoff_max_s=1)
    with pytest.raises(ValueError):
        LiveSettings(max_reopen_attempts=-1)


# --------------------------------------------------------------------------- read-ahead


class _CountingSource(Source):
    """A file source that counts the frames it decoded, and can fail after some."""

    def __init__(self, inner: Source, fail_after: int | None = None) -> None:
        super().__init__()
        self.inner, self.fail_after, self.decoded = inner, fail_after, 0
        self.name = inner.name

    def __iter__(self):
        for frame in self.inner:
            if self.closed:
                return
            if self.fail_after is not None and self.decoded == self.fail_after:
                raise OSError("the disk went away")
            self.decoded += 1
            yield frame

    def close(self) -> None:
        super().close()
        self.inner.close()


def test_a_file_is_decoded_ahead_of_a_slow_loop_in_order_and_charged_only_what_it_waited(
        tmp_path):
    """A video file read ahead on its own thread gives every frame, in order, as reading
    it in the loop does; a loop slower than the decoder then waits for no decode, so the
    frames' capture cost is the wait, not the decode."""
    p = _write_video(tmp_path / "clip.avi", 20, size=(1024, 768))
    with open_source(p) as src:
        direct = [(f.index, _index_of(f.image), f.read_s) for f in src]
    got = []
    with open_source(p) as src:
        for frame in read_ahead(src):
            got.append((frame.index, _index_of(frame.image), frame.read_s))
            time.sleep(0.03)  # a slow model
    assert [g[:2] for g in got] == [d[:2] for d in direct] == [(i, i) for i in range(20)]
    assert all(d[2] > 0 for d in direct)  # decoded in the loop: all of it charged
    waited = [g[2] for g in got[1:]]  # the first frame is waited for
    assert all(w is not None and w >= 0 for w in waited)
    assert np.median(waited) < 0.2 * np.median([d[2] for d in direct[1:]])


def test_read_ahead_is_bounded_stops_with_the_loop_and_raises_the_sources_error(tmp_path):
    """At most a few frames are decoded ahead of the loop; a loop that stops early leaves
    no reading thread behind; a source that fails mid-way fails in the loop, by name."""

    p = _write_video(tmp_path / "clip.avi", 40)
    with open_source(p) as inner:
        src = _CountingSource(inner)
        frames = read_ahead(src, depth=2)
        first = [next(frames) for _ in range(3)]
        time.sleep(0.3)  # time enough to decode the whole clip, were it unbounded
        assert [f.index for f in first] == [0, 1, 2]
        assert src.decoded <= 3 + 2 + 1  # taken + waiting + one in hand
        frames.close()
    deadline = time.monotonic() + 5  # it ends at once; a host stall may delay it a little
    while [t for t in threading.enumerate() if t.name.startswith("read-")]:
        assert time.monotonic() < deadline, "a reading thread outlived its loop"
        time.sleep(0.02)
    with open_source(p) as inner:
        failing = _CountingSource(inner, fail_after=5)
        seen = []
        with pytest.raises(OSError, match="the disk went away"):
            for frame in read_ahead(failing):
                seen.append(frame.index)
        assert seen == [0, 1, 2, 3, 4]


def test_a_paced_file_read_ahead_by_a_slow_loop_stays_as_fresh_as_a_live_feed(tmp_path):
    """A paced file played to a loop slower than its frame rate skips late frames, and read
    ahead it keeps one frame ready, not a queue: frames reach the loop within a frame time
    of being due, and none (but one a host stall may catch) more than two and a half late.
    A queue would make every frame later than the one before."""
    fps = 30.0
    p = _write_video(tmp_path / "live_like.avi", 45, fps=fps)
    lateness = []
    with open_source(p, pace=True) as src:
        t0 = time.monotonic()
        for frame in read_ahead(src):
            lateness.append(time.monotonic() - (t0 + frame.index / fps))
            time.sleep(0.1)  # a slow model: 10 fps against a 30 fps file
    assert src.dropped > 0
    # A fresh-clone CI once saw one frame 345 ms late among 14 (the rest under 2 ms): the
    # VM's host stalled the whole process. A queue of old frames would fail both bounds.
    late = sorted(lateness[1:])
    assert late[len(late) // 2] < 1 / fps and late[-2] < 0.1 + 2.5 / fps, late


def test_the_decoding_thread_prepares_each_frame_and_the_loop_is_charged_what_it_waited(
        tmp_path):
    """`prepare` (the models' half-resolution grey) runs on the decoding thread right after
    each decode, while the frame's pixels are still in that core's cache; a loop faster than
    decode and prepare together waits for both, and is charged for both."""

    p = _write_video(tmp_path / "clip.avi", 12, size=(1024, 768))
    threads = []

    def prepare(image):
        threads.append(threading.current_thread().name)
        time.sleep(0.02)
        return np.ascontiguousarray(image[::2, ::2, 0])

    with open_source(p) as src:
        frames = list(read_ahead(src, prepare=prepare))  # a loop that takes no time
    assert [f.index for f in frames] == list(range(12))
    assert all(f.half_grey is not None and f.half_grey.shape == (384, 512) for f in frames)
    assert len(threads) == 12 and all(name.startswith("read-") for name in threads)
    assert np.median([f.read_s for f in frames[1:]]) >= 0.015


def test_a_live_grabber_prepares_each_frame_on_its_own_thread(tmp_path):

    p = _write_video(tmp_path / "dongle.avi", 30)
    s = LiveSettings(backoff_initial_s=0.01, backoff_max_s=0.02, max_reopen_attempts=0,
                     poll_s=0.01)
    threads = []

    def slow_opener():  # gives the loop time to hand over `prepare` before the first frame
        time.sleep(0.2)
        return cv2.VideoCapture(str(p))

    def prepare(image):
        threads.append(threading.current_thread().name)
        return np.zeros((image.shape[0] // 2, image.shape[1] // 2), np.uint8)

    src = LiveSource("test:prepared", slow_opener, s)
    deadline = time.monotonic() + 10
    frames = []
    for frame in read_ahead(src, prepare=prepare):
        frames.append(frame)
        assert time.monotonic() < deadline
    src.close()
    assert frames and all(f.half_grey is not None for f in frames)
    assert threads and all(name.startswith("grab-") for name in threads)


@pytest.mark.parametrize("spec", ["rtsp://10.0.0.5:554/stream", "http://district/clip.mp4"])
def test_a_network_stream_is_named_as_such_not_as_a_missing_file(spec):
    with pytest.raises(SourceError) as caught:
        open_source(spec)
    assert "network streams are not a source here" in _one_line(caught.value)


def test_a_grabber_s_stretch_is_undone_before_anything_reads_the_frame(tmp_path):
    """`[source] stretch` (`narrowing`): a live grabber's frames, and a file's, come out
    narrowed by it, on the grabber's or the decoder's thread, before `prepare` sees them."""
    from edge.capture.sources import narrowing

    p = _write_video(tmp_path / "dongle.avi", 20)
    width = cv2.VideoCapture(str(p)).get(cv2.CAP_PROP_FRAME_WIDTH)
    s = LiveSettings(backoff_initial_s=0.01, backoff_max_s=0.02, max_reopen_attempts=0,
                     poll_s=0.01)
    seen = []

    def slow_opener():  # gives the loop time to hand over the hooks before the first frame
        time.sleep(0.2)
        return cv2.VideoCapture(str(p))

    def prepare(image):
        seen.append(image.shape[1])
        return None

    src = LiveSource("test:stretched", slow_opener, s)
    live = list(read_ahead(src, prepare=prepare, reshape=narrowing(4 / 3)))
    src.close()
    assert live and {f.image.shape[1] for f in live} == {round(width * 3 / 4)}
    assert set(seen) == {round(width * 3 / 4)}
    with open_source(p) as source:
        files = list(read_ahead(source, reshape=narrowing(4 / 3)))
    assert files and {f.image.shape[1] for f in files} == {round(width * 3 / 4)}
    assert narrowing(1.0) is None
