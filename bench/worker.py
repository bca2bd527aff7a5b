"""One measurement in a fresh process: `python -m bench.worker model|path ...`.

A process per measurement keeps peak RSS per model and stops one model's warm caches
from flattering the next. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

import cv2

from edge.capture.sources import open_source
from edge.config import load_settings
from edge.exam.protocol import find_protocol
from edge.exam.session import ExamTracker
from edge.exam.tally import percentile
from edge.models.manifest import read_manifest
from edge.models.preprocess import prepare
from edge.models.roi import Roi, find_roi
from edge.models.runtime import load_model
from edge.scorer import make_scorer, timed_frames


def _p90(values: list[float]) -> float:
    """The device's own percentile (linear between ranks), so bench and run summary agree."""
    return percentile(values, 0.9)


def _rss_mb() -> float:
    """Peak RSS of this process. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    exec, so a worker started by a parent that loaded torch would report the parent's."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_model(manifest_path: str, threads: int, frame_path: str, runs: int) -> dict:
    manifest = read_manifest(manifest_path)
    model = load_model(manifest, "litert", threads)
    image = cv2.imread(frame_path)
    x = prepare(image, find_roi(image), manifest.preprocessing)
    for _ in range(10):
        model.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.run(x)
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(times), "p90_ms": _p90(times), "rss_mb": _rss_mb()}


def time_path(models_dir: str, name: str, threads: int, pixel_size_mm: float = 0.0,
              audit: bool = True, paced: bool = False, decoded: bool = False) -> dict:
    """The loop's own per-frame path on the demo clip; with a pixel size, head-plane frames
    also run the head segmenter and the measurement, timed apart. With the audit on, the
    quality audit's own time (image statistics, the learned quality head, the criteria) is
    timed apart too, and so is the head segmentation on frames that may show a head.
    `paced`: the clip played at its own frame rate, as a live scanner hands frames over,
    instead of back to back (the cores then idle between frames). `decoded`: every frame
    decoded (and its half-resolution grey made) before the first is scored, then scored
    back to back: the scoring's own cost, without the next frame's decode on the other
    core (which a live grabber does only when a frame arrives mid-scoring)."""
    overrides = {"models": {"dir": models_dir, "plane": name, "num_threads": threads},
                 "quality": {"enabled": audit}}
    if pixel_size_mm:
        overrides["biometry"] = {"pixel_size_mm": pixel_size_mm}
    settings = load_settings(None, overrides)
    scorer = make_scorer(settings)
    parts: dict[str, list[float]] = {"latency_ms": [], "capture_ms": [], "preprocess_ms": [],
                                     "infer_ms": []}
    head_ms: list[float] = []
    head_total: list[float] = []
    head_invokes: list[float] = []  # the models' own invokes within each head-plane frame
    invoked = _time_invokes()
    quality_ms: list[float] = []
    judged_ms: list[float] = []
    # As the loop runs: an exam tracker keeps the heads it reports and measures them again
    # with the segmenter's own passes when the exam ends (timed apart, below).
    tracker = ExamTracker(find_protocol(settings.exam.protocol), settings.exam, None,
                          lambda *_: None, measure_kept=scorer.measure_kept)

    def clip():
        with open_source("demo", pace=paced) as source:
            # the clip's own head scales left out: biometry runs only at `pixel_size_mm`,
            # as on a scanner whose calibration is set, and not at all without one
            source.pixel_sizes = ()
            yield from timed_frames(source, scorer.prepare_frame)

    frames = list(clip()) if decoded else None
    started = time.perf_counter()
    for frame, capture_s in (frames if decoded else clip()):
        invoked[0] = 0.0
        result = scorer.score(frame, 0.0 if decoded else capture_s)
        roi = Roi(*result.roi) if result.roi else None
        tracker.feed(result.to_dict(), frame.image, roi, mono=frame.t_mono)
        if result.error is None:
            for key, values in parts.items():
                values.append(getattr(result, key))
            if result.biometry is not None:
                head_ms.append(result.biometry["ms"])
                head_total.append(result.latency_ms)
                head_invokes.append(invoked[0] * 1000)
            if result.quality is not None:
                quality_ms.append(result.quality["ms"])
            if result.head_ms is not None:
                judged_ms.append(result.head_ms)
    wall_s = time.perf_counter() - started
    end_started = time.perf_counter()  # the exam's end: its reported heads measured again
    remeasured = tracker.current.measure_kept_heads() if tracker.current is not None else 0
    end_ms = (time.perf_counter() - end_started) * 1000
    tracker.end("source_end")
    lat = parts["latency_ms"]
    # The loop's throughput: the whole clip's wall time per frame. With the decode on its
    # own thread (read_ahead) a frame's latency no longer holds it; this still holds all.
    out = {"frames": len(lat), "median_ms": statistics.median(lat), "p90_ms": _p90(lat),
           "wall_ms_per_frame": wall_s * 1000 / max(1, len(lat)),
           **{key: statistics.median(v) for key, v in parts.items() if key != "latency_ms"},
           "rss_mb": _rss_mb(), "learned_quality_head": bool(
               scorer.quality and scorer.quality.learned)}
    if quality_ms:
        out.update(quality_ms_median=statistics.median(quality_ms),
                   quality_ms_p90=_p90(quality_ms))
    if judged_ms:
        out.update(head_judged_frames=len(judged_ms), head_judged_ms_median=statistics.median(
            judged_ms), head_judged_ms_p90=_p90(judged_ms))
    if pixel_size_mm:
        out["head_frames"] = len(head_ms)
        out["measured_again"] = remeasured  # when the exam ended, off the frames' path
        out["exam_end_ms"] = end_ms
        if head_ms:
            out.update(head_ms_median=statistics.median(head_ms), head_ms_p90=_p90(head_ms),
                       head_frame_median_ms=statistics.median(head_total),
                       head_frame_p90_ms=_p90(head_total),
                       head_invokes_median_ms=statistics.median(head_invokes),
                       head_rest_median_ms=statistics.median(
                           t - m for t, m in zip(head_total, head_invokes, strict=True)))
    return out


def _time_invokes() -> list[float]:
    """Every model's invoke in this process timed into the one-element list returned
    (seconds, summed until the caller resets it): what a frame's models themselves took,
    apart from the rest of its path."""
    from edge.models.runtime import Model

    total = [0.0]
    invoke = Model._invoke

    def timed(self, x):
        started = time.perf_counter()
        try:
            return invoke(self, x)
        finally:
            total[0] += time.perf_counter() - started

    Model._invoke = timed
    return total


def time_passes(manifest_path: str, threads: int, margin: float, max_zoom: float,
                frames: list[str]) -> dict:
    """The head segmenter's measure_frame per pass option on real head frames (`frames`:
    "path=pixel_mm" items): what each option of edge.models.biometry.Passes costs per frame,
    segmenter runs and measurement together."""
    from edge.models.biometry import Passes, measure_frame, settings_for_model

    manifest = read_manifest(manifest_path)
    model = load_model(manifest, "litert", threads)
    settings = settings_for_model(manifest)
    images = [(cv2.imread(item.rsplit("=", 1)[0]), float(item.rsplit("=", 1)[1]))
              for item in frames]
    options = {"one pass": Passes(), "flip": Passes(test_time_flip=True),
               "crop": Passes(refine_crop_margin=margin, refine_max_zoom=max_zoom),
               "crop + flip": Passes(test_time_flip=True, refine_crop_margin=margin,
                                     refine_max_zoom=max_zoom)}
    out = {}
    for name, passes in options.items():
        for image, pixel in images[:3]:
            measure_frame(model, image, None, pixel, settings, passes)
        times = []
        for image, pixel in images:
            t0 = time.perf_counter()
            measure_frame(model, image, None, pixel, settings, passes)
            times.append((time.perf_counter() - t0) * 1000)
        out[name] = {"median_ms": statistics.median(times), "p90_ms": _p90(times),
                     "runs": passes.runs()}
    return out


def time_idle(models_dir: str, names: list[str], threads: int, frame_path: str,
              fps: float = 15.0, frames: int = 150) -> dict:
    """What the host charges for idling between frames: the models of a head-plane frame
    (`names`, one real frame) run back to back, then once per 1/fps with the loop asleep
    between frames as on a live scanner, then once per 1/fps with the loop spinning instead
    of sleeping. Code and inputs are the same in all three; only the cores' idling differs."""
    image = cv2.imread(frame_path)
    roi = find_roi(image)
    models = []
    for name in names:
        manifest = read_manifest(str(Path(models_dir) / f"{name}.json"))
        models.append((load_model(manifest, "litert", threads),
                       prepare(image, roi, manifest.preprocessing)))

    def one_frame() -> float:
        t0 = time.perf_counter()
        for model, x in models:
            model.run(x)
        return (time.perf_counter() - t0) * 1000

    for _ in range(20):
        one_frame()
    gap = 1.0 / fps
    out = {}
    for mode in ("back to back", "paced, asleep between frames", "paced, spinning between "
                                                                 "frames"):
        times = []
        for _ in range(frames):
            times.append(one_frame())
            if mode.startswith("paced, asleep"):
                time.sleep(gap)
            elif mode.startswith("paced, spinning"):
                until = time.perf_counter() + gap
                while time.perf_counter() < until:
                    pass
        out[mode] = {"median_ms": statistics.median(times), "p90_ms": _p90(times)}
    return out


USAGE = ("usage: python -m bench.worker model MANIFEST THREADS FRAME RUNS\n"
         "       python -m bench.worker idle MODELS_DIR THREADS FRAME NAME...\n"
         "       python -m bench.worker passes MANIFEST THREADS MARGIN MAX_ZOOM FRAME...\n"
         "       python -m bench.worker path MODELS_DIR PLANE_MODEL THREADS [PIXEL_SIZE_MM] "
         "[noaudit] [paced] [decoded]\n"
         "One measurement in this process, one JSON line (run by `make bench`).")


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    least = {"model": 5, "idle": 5, "passes": 6, "path": 4}  # the words each needs
    if not argv or len(argv) < least.get(argv[0], 99):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "model":
        out = time_model(argv[1], int(argv[2]), argv[3], int(argv[4]))
    elif argv[0] == "idle":
        out = time_idle(argv[1], argv[4:], int(argv[2]), argv[3])
    elif argv[0] == "passes":
        out = time_passes(argv[1], int(argv[2]), float(argv[3]), float(argv[4]), argv[5:])
    else:
        out = time_path(argv[1], argv[2], int(argv[3]), float(argv[4]) if len(argv) > 4 else 0.0,
                        audit="noaudit" not in argv[5:], paced="paced" in argv[5:],
                        decoded="decoded" in argv[5:])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
