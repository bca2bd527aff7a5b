"""`make bench`: speed and size of the models, the device path, and the MQTT figures.

Everything is measured in one run on this machine; ratios are taken within the run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bench import bench_mqtt
from bench import dashboard as bench_dashboard
from bench.agreement import example_planes, summarise
from bench.audit import audit_section, sweeps_section
from bench.models import format_table, model_table, time_device_path, time_idle
from bench.web import web_section
from edge.models.manifest import ModelError, read_manifest, verify
from quantize.agreement import device_path_agreement

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "bench"


def _reference_models() -> tuple[Path, Path | None]:
    """The fp32 teacher (exported here) and the fp32 student of the last `make models`."""
    from quantize.export import export_student_fp32, export_teacher_fp32

    teacher = export_teacher_fp32(BUILD / "teacher")
    try:
        student = export_student_fp32(BUILD / "student").with_suffix(".json")
        verify(read_manifest(student))
        shipped_sha = read_manifest(REPO / "models" / "plane_student.json").sha256
        raw = read_manifest(student).raw
        if shipped_sha not in (raw.get("int8_sha256"), raw.get("int8_with_maps_sha256")):
            raise ModelError(f"{student}: not the fp32 twin of the shipped int8 student")
    except (FileNotFoundError, ModelError) as exc:
        print(f"note: {exc}; the fp32 student row is left out (run `make models`)")
        student = None
    return teacher.with_suffix(".json"), student


def _segmenter_rows(frame: Path) -> None:
    """The head segmenter: fp32 teacher (regenerated from the build's checkpoint) vs the
    shipped int8 student, timed in this run like the plane models."""
    from quantize.build_segmenter import export_teacher_fp32

    shipped = REPO / "models" / "head_segmenter.json"
    if not shipped.is_file():
        print(f"\nnote: {shipped} missing; the head segmenter rows are left out")
        return
    import json

    kind = json.loads(shipped.read_text()).get("selection", {}).get("kind", "student")
    models = [(f"head {kind} int8 (shipped)", shipped)]
    try:
        teacher = export_teacher_fp32(BUILD / "head_teacher").with_suffix(".json")
        models.insert(0, ("head teacher DeepLabv3+-lite 240x360 fp32", teacher))
    except FileNotFoundError as exc:
        print(f"\nnote: {exc}; the head teacher rows are left out")
    labels = [label for label, _ in models]
    rows = model_table(models, frame)
    print("\n## Head segmenter latency (ai-edge-litert, XNNPACK; each at its own input: the "
          "student 160x240, the teacher 240x360; one real frame, "
          "200 invokes)\n")
    print(format_table(rows))
    by = {(r.label, r.threads): r.median_ms for r in rows}
    for threads in (1, 2) if len(labels) == 2 else ():
        t, s = by[(labels[0], threads)], by[(labels[1], threads)]
        print(f"\nratio at {threads} thread(s): head {kind} int8 is {t / s:.2f}x faster than "
              f"the head teacher fp32 ({s:.2f} / {t:.2f} ms)")
    size = (REPO / "models" / "head_segmenter.tflite").stat().st_size
    print(f"head {kind} int8 size: {size / 1024:.0f} KiB ({size} bytes)")
    _passes_rows(shipped)


def _passes_rows(shipped: Path, count: int = 40) -> None:
    """What each pass option of the measurement costs per head frame, on real validation
    heads, with the shipped segmenter; and which option its manifest chose."""
    from bench.models import time_passes
    from quantize.build_segmenter import CROP_MARGIN, CROP_MAX_ZOOM
    from quantize.data import data_dir
    from quantize.seg_data import hc18_split, read_hc_table

    table = read_hc_table(data_dir())
    _, val = hc18_split(data_dir())
    frames = [(f.path, table[f.path.name][0]) for f in val[:: max(1, len(val) // count)][:count]]
    block = read_manifest(shipped).raw.get("biometry", {})
    margin = block.get("refine_crop_margin") or CROP_MARGIN
    max_zoom = block.get("refine_max_zoom") or CROP_MAX_ZOOM
    print(f"\n## Head biometry passes: segmenter + measurement per head frame ({len(frames)} "
          f"HC18 validation frames, 2 threads; crop margin {margin:g}, zoom at most "
          f"{max_zoom:g}x)\n")
    print("| passes | model runs | median ms | p90 ms |\n|---|---|---|---|")
    for name, t in time_passes(shipped, 2, margin, max_zoom, frames).items():
        print(f"| {name} | {t['runs']} | {t['median_ms']:.2f} | {t['p90_ms']:.2f} |")
    print(f"shipped manifest: test_time_flip={block.get('test_time_flip', False)}, "
          f"refine_crop_margin={block.get('refine_crop_margin', 0.0)}, "
          f"refine_max_zoom={block.get('refine_max_zoom', 0.0)}")


BENCH_PIXEL_SIZE_MM = 0.15  # a typical HC18 pixel size; only the timing depends on it


def _head_frames(path: dict) -> str:
    """The head-plane frames' figures of one `time_device_path` run, as every line says them."""
    return (f"head-plane frames median {path['head_frame_median_ms']:.2f} ms, p90 "
            f"{path['head_frame_p90_ms']:.2f} ms")


def _avx2_section(teacher: Path, student_int8: Path, frame: Path,
                  full: dict[str, dict]) -> None:
    """Issue 13's second kind of CPU, an AVX2 EPYC without VNNI, as this CPU with AVX-512
    and VNNI hidden (bench/isa.py): the same models and head-plane path in the same run
    (called only with a shipped head segmenter).
    `full`: this run's head-plane path figures with every instruction, for the ratios."""
    from bench.isa import hidden_isa_env

    env, why = hidden_isa_env(BUILD)
    print("\n## The same on AVX2 alone (issue 13's AMD EPYC without VNNI)\n")
    if env is None:
        print(f"left out: {why}")
        return
    print(f"{why}. This core's clock and caches with AVX2's kernels, not that CPU: the "
          "ratios travel, the milliseconds only roughly.\n")
    models = [("teacher SonoNet-16 fp32", teacher), ("student int8 (shipped)", student_int8),
              ("head segmenter int8 (shipped)", REPO / "models" / "head_segmenter.json")]
    rows = model_table(models, frame, env=env)
    print(format_table(rows))
    by = {(r.label, r.threads): r.median_ms for r in rows}
    for threads in (1, 2):
        t, s8 = by[("teacher SonoNet-16 fp32", threads)], by[("student int8 (shipped)", threads)]
        print(f"\nratio at {threads} thread(s), AVX2 alone: student int8 / teacher fp32 = "
              f"{s8 / t:.3f} ({s8:.2f} / {t:.2f} ms)")
    for name, decoded in (("back to back", False), ("decoded beforehand", True)):
        path = time_device_path(student_int8, 2, BENCH_PIXEL_SIZE_MM, decoded=decoded,
                                env=env)
        if not path.get("head_frames"):
            continue
        line = (f"AVX2 alone, head-plane frames with biometry ({path['head_frames']}), {name}:"
                f" median {path['head_frame_median_ms']:.2f} ms, p90 "
                f"{path['head_frame_p90_ms']:.2f} ms")
        if full.get(name, {}).get("head_frames"):
            base = full[name]["head_frame_median_ms"]
            line += (f"; {path['head_frame_median_ms'] / base:.2f}x the median with every "
                     f"instruction ({base:.2f} ms)")
        print(line)


def _ruler_rows(repeats: int = 20) -> None:
    """The depth ruler read on each head frame where `[biometry] ruler_tick_mm` is set
    (edge/models/ruler.py): the whole search, and the reader's usual case, the last
    column read again. On the 13 real Voluson E8 screens, 975x735."""
    import cv2
    import numpy as np

    from edge.models.ruler import RulerReader, read_ruler
    from quantize.data import data_dir

    screens = [cv2.imread(str(p)) for p in
               sorted((data_dir() / "sononet" / "examples").glob("*.tiff"))]
    screens = [s for s in screens if s is not None]
    if not screens:
        print("\nnote: no SonoNet example screens; the ruler rows are left out")
        return
    cold, warm, read = [], [], 0
    for screen in screens:
        reader = RulerReader(5.0)
        read += reader.read(screen) is not None
        for _ in range(repeats):
            t0 = time.perf_counter()
            read_ruler(screen)
            t1 = time.perf_counter()
            reader.read(screen)
            t2 = time.perf_counter()
            cold.append((t1 - t0) * 1000)
            warm.append((t2 - t1) * 1000)
    q = lambda v, p: float(np.percentile(v, p))  # noqa: E731
    print(f"\n## Depth ruler, read per measured head frame ({len(screens)} Voluson E8 screens "
          f"975x735, {repeats} each; {read}/{len(screens)} read)\n")
    print(f"whole search: median {q(cold, 50):.2f} ms, p90 {q(cold, 90):.2f} ms; the last "
          f"column read again (the reader's usual frame): median {q(warm, 50):.2f} ms, p90 "
          f"{q(warm, 90):.2f} ms; ratio {q(warm, 50) / q(cold, 50):.3f}")


def _fan_rows(repeats: int = 5) -> None:
    """The probe's fan read for the screen-shape check (edge/models/fan.py), beside the
    loop: on the 66 real screens here (SonoNet, FETAL_PLANES_DB, cord JPEGs) as captured,
    the ones that show their whole fan and the rest apart, at 1280x720 (a 4:3 screen
    stretched into 16:9) and at 1920x1080 (read on a copy 1280 wide)."""
    import cv2
    import numpy as np

    from edge.models.fan import FanSettings, read_fan
    from edge.models.roi import to_grey
    from quantize.data import data_dir

    paths = sorted((data_dir() / "sononet" / "examples").glob("*.tiff"))
    paths += sorted((data_dir() / "planes" / "images").glob("*.*"))
    greys = [to_grey(img) for img in (cv2.imread(str(p)) for p in paths) if img is not None]
    if not greys:
        print("\nnote: no real screens; the screen-shape rows are left out")
        return
    shown, hidden, wide, full_hd, read = [], [], [], [], 0
    for grey in greys:
        stretched = cv2.resize(grey, (1280, 720), interpolation=cv2.INTER_LINEAR)
        large = cv2.resize(grey, (1920, 1080), interpolation=cv2.INTER_LINEAR)
        whole = read_fan(grey) is not None
        read += whole
        for _ in range(repeats):
            t0 = time.perf_counter()
            read_fan(grey)
            t1 = time.perf_counter()
            read_fan(stretched)
            t2 = time.perf_counter()
            read_fan(large)
            t3 = time.perf_counter()
            (shown if whole else hidden).append((t1 - t0) * 1000)
            wide.append((t2 - t1) * 1000)
            full_hd.append((t3 - t2) * 1000)
    q = lambda v, p: float(np.percentile(v, p)) if v else float("nan")  # noqa: E731
    every = FanSettings().every_frames
    print(f"\n## Screen shape, the probe's fan read beside the loop every {every} frames, "
          f"every {FanSettings().fast_every_frames} for a new screen's first "
          f"{FanSettings().fast_for_frames} "
          f"({len(greys)} real screens, {repeats} each; {read} show their whole fan)\n")
    print(f"as captured, whole fan shown: median {q(shown, 50):.2f} ms, p90 {q(shown, 90):.2f} "
          f"ms; no whole fan: median {q(hidden, 50):.2f} ms, p90 {q(hidden, 90):.2f} ms; at "
          f"1280x720: median {q(wide, 50):.2f} ms, p90 {q(wide, 90):.2f} ms; at 1920x1080: "
          f"median {q(full_hd, 50):.2f} ms, p90 {q(full_hd, 90):.2f} ms; at 1280x720 "
          f"spread over {every} frames, {q(wide, 50) / every:.3f} ms a frame")


def main() -> int:
    from quantize.data import data_dir, list_frames, split
    from quantize.manifest import cpu_description

    student_int8 = REPO / "models" / "plane_student.json"
    teacher, student_fp32 = _reference_models()
    frame = data_dir() / "hc18" / "images" / "100_HC.png"
    models = [("teacher SonoNet-16 fp32", teacher), ("student int8 (shipped)", student_int8)]
    if student_fp32 is not None:
        models.insert(1, ("student fp32", student_fp32))
    rows = model_table(models, frame)
    print(f"CPU: {os.cpu_count()} cores, {cpu_description()} (int8 speed hangs on these)\n")
    print("## Model latency (ai-edge-litert, XNNPACK; one real frame, 200 invokes)\n")
    print(format_table(rows))
    by = {(r.label, r.threads): r for r in rows}
    for threads in (1, 2):
        t = by[("teacher SonoNet-16 fp32", threads)].median_ms
        s8 = by[("student int8 (shipped)", threads)].median_ms
        print(f"\nratio at {threads} thread(s): student int8 / teacher fp32 = {s8 / t:.3f} "
              f"({s8:.2f} / {t:.2f} ms)")
        if ("student fp32", threads) in by:
            s32 = by[("student fp32", threads)].median_ms
            print(f"ratio at {threads} thread(s): student fp32 / teacher fp32 = {s32 / t:.3f}")
    t_macs = by[("teacher SonoNet-16 fp32", 1)].macs
    s_macs = by[("student int8 (shipped)", 1)].macs
    if t_macs and s_macs:
        print(f"multiply-adds: student {s_macs / 1e6:.1f} M / teacher {t_macs / 1e6:.1f} M = "
              f"{s_macs / t_macs:.3f}")
    size = (REPO / "models" / "plane_student.tflite").stat().st_size
    print(f"student int8 size: {size / 1024:.0f} KiB ({size} bytes)")

    _segmenter_rows(frame)

    print("\n## Whole per-frame path on the demo clip (capture + ROI + preprocess + infer)\n")
    path = time_device_path(student_int8, 2)
    print(f"student int8, 2 threads, {path['frames']} frames: median {path['median_ms']:.2f} ms,"
          f" p90 {path['p90_ms']:.2f} ms (capture {path['capture_ms']:.2f}, preprocess "
          f"{path['preprocess_ms']:.2f}, infer {path['infer_ms']:.2f}); peak RSS "
          f"{path['rss_mb']:.0f} MB")
    if (REPO / "models" / "head_segmenter.json").is_file():
        bio = time_device_path(student_int8, 2, BENCH_PIXEL_SIZE_MM)
        if bio.get("head_frames"):
            print(f"with head biometry at {BENCH_PIXEL_SIZE_MM} mm/px, 2 threads: all "
                  f"{bio['frames']} frames median {bio['median_ms']:.2f} ms, p90 "
                  f"{bio['p90_ms']:.2f} ms; the {bio['head_frames']} head-plane frames median "
                  f"{bio['head_frame_median_ms']:.2f} ms, p90 {bio['head_frame_p90_ms']:.2f} ms,"
                  f" of which segmenter + measurement median {bio['head_ms_median']:.2f} ms, "
                  f"p90 {bio['head_ms_p90']:.2f} ms; peak RSS {bio['rss_mb']:.0f} MB; "
                  f"the exam's {bio.get('measured_again', 0)} reported heads measured again "
                  f"with the segmenter's own passes when it ended, off the frames' path, in "
                  f"{bio.get('exam_end_ms', float('nan')):.1f} ms")
        else:
            print("with head biometry: no frame of the demo clip was named a head plane")
        decoded = time_device_path(student_int8, 2, BENCH_PIXEL_SIZE_MM, decoded=True)
        if decoded.get("head_frames"):
            print(f"the same, every frame decoded before the first is scored (the scoring "
                  f"alone, no decode of the next frame on the other core): "
                  f"{_head_frames(decoded)}; all {decoded['frames']} frames "
                  f"median {decoded['median_ms']:.2f} ms. Of a head-plane frame, the "
                  f"models' own invokes median {decoded['head_invokes_median_ms']:.2f} ms, "
                  f"the rest of its path (region, views, the head's ellipse, the audit) "
                  f"median {decoded['head_rest_median_ms']:.2f} ms")
        paced = time_device_path(student_int8, 2, BENCH_PIXEL_SIZE_MM, paced=True)
        if paced.get("head_frames"):
            print(f"the same, the clip paced at its own frame rate as a live scanner's frames "
                  f"come ({paced['frames']} frames scored; the cores idle between frames): "
                  f"all median {paced['median_ms']:.2f} ms, p90 {paced['p90_ms']:.2f} ms; "
                  f"{_head_frames(paced)}")
        _avx2_section(teacher, student_int8, frame,
                      {"back to back": bio, "decoded beforehand": decoded})
        names = [m for m in ("plane_student", "quality_head", "head_segmenter")
                 if (REPO / "models" / f"{m}.json").is_file()]
        idle = time_idle(REPO / "models", names, 2, frame)
        print(f"what the host charges for idle cores: the {', '.join(names)} models on one "
              "head frame, 2 threads, the same code each time: " + "; ".join(
                  f"{mode} median {t['median_ms']:.2f} ms, p90 {t['p90_ms']:.2f}"
                  for mode, t in idle.items())
              + " (15 fps; a paced path slower than back to back by what spinning takes "
                "back is the cores' wake-up, not the code)")

    _ruler_rows()
    _fan_rows()
    audit_section(student_int8, BENCH_PIXEL_SIZE_MM)
    sweeps_section()

    print("\n## Agreement on held-out real frames, through the device path\n")
    _, heldout = split(list_frames())
    result = device_path_agreement(teacher, student_int8, [f.path for f in heldout])
    print(summarise(result))
    answers = example_planes(student_int8, data_dir() / "sononet" / "examples")
    right = sum(want == got for want, got in answers.values())
    wrong = ", ".join(f"{k}: {got}" for k, (want, got) in answers.items() if want != got)
    print(f"13 SonoNet example screens, student int8: {right}/13 correct"
          + (f" (wrong: {wrong})" if wrong else ""))

    web_section()  # the midwife's page: latency in the browser, bandwidth, CPU (bench/web.py)
    print("\n## Store-and-forward and collector\n", flush=True)
    return bench_mqtt.main() or bench_dashboard.main([])  # issue 17: pages and ingestion


if __name__ == "__main__":
    sys.exit(main())
