"""The int8 toolchain: MAC counts, the patient split, consistent views, the true-label term,
the quantize gate, the shipped student.

Fast (< 60 s on 2 cores) and independent of `make models`: the gate test converts a tiny
network itself; the shipped-model test uses only models/ from the repository.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.models.preprocess import PreprocessSpec, grey_resized, normalise
from edge.models.roi import find_roi
from quantize.data import CORD_GROUP, LABELS, list_frames, make_view, read_frame, split
from quantize.macs import count_macs
from quantize.student import MobileSpec, MobileStudent, PlaneStudent
from quantize.teacher import SonoNet16

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SONOEDGE_DATA") or REPO.parent / "shared" / "data")
needs_data = pytest.mark.skipif(not (DATA / "sononet").is_dir(),
                                reason=f"{DATA}: shared data folder not present")


def test_teacher_macs_by_hand_and_student_under_an_eighth():
    # SonoNet-16 at 224x288: 13 3x3 convs in 5 blocks (4 pools), then 1x1 128->64->14.
    hw = [224 * 288 // 4**i for i in range(5)]
    widths = [[16, 16], [32, 32], [64, 64, 64], [128, 128, 128], [128, 128, 128]]
    macs, cin = 0, 1
    for block, size in zip(widths, hw, strict=True):
        for cout in block:
            macs += size * cout * cin * 9
            cin = cout
    macs += hw[-1] * (128 * 64 + 64 * 14)
    assert count_macs(SonoNet16(), (1, 1, 224, 288)) == macs == 1_237_824_000
    # The 1.2 student by hand: 4x4 unshuffle, a dense 3x3 stem at 56x72, then inverted
    # residuals (1x1 expand, kxk depthwise at the block's stride, 1x1 project), the head.
    spec = MobileSpec()
    h, w = 224 // spec.unshuffle, 288 // spec.unshuffle
    student, cin = h * w * spec.stem_width * spec.unshuffle**2 * 9, spec.stem_width
    for expand, width, blocks, stride, kernel in spec.stages:
        for i in range(blocks):
            hidden = cin * expand
            student += h * w * cin * hidden if expand != 1 else 0
            if i == 0 and stride == 2:
                h, w = h // 2, w // 2
            student += h * w * hidden * kernel * kernel + h * w * hidden * width
            cin = width
    student += h * w * (cin * spec.head_width + spec.head_width * 14)
    assert (h, w) == (14, 18)
    assert count_macs(MobileStudent(spec), (1, 1, 224, 288)) == student
    assert student * 8 <= macs


def test_student_maps_match_teacher_grid():
    """The class maps are the last layer before the mean, on the teacher's 14x18 grid."""
    from quantize.distil import STUDENT_SPEC

    student = MobileStudent().eval()
    x = torch.randn(1, 1, STUDENT_SPEC.height, STUDENT_SPEC.width)
    logits, maps = student.forward_maps(x)
    assert tuple(maps.shape) == (1, 14, 14, 18)
    assert torch.allclose(logits, maps.mean(dim=(2, 3))) and torch.equal(logits, student(x))


def test_true_label_term_puts_the_true_plane_on_top():
    """On an example view the target is 0.7 x the true label + 0.3 x the teacher: the true
    plane leads even where the teacher is sure of another; unlabelled rows keep the teacher."""
    from quantize.distil import TrainSettings, soft_targets

    teacher = torch.full((2, 14), -8.0)
    teacher[:, 11] = 8.0  # the teacher says RVOT on both
    target = soft_targets(teacher, 2.0, torch.tensor([0, -1]), TrainSettings().label_weight)
    assert target.argmax(1).tolist() == [0, 11]
    assert torch.allclose(target.sum(1), torch.ones(2))
    assert torch.allclose(target[1], torch.softmax(teacher[1] / 2.0, 0))


@needs_data
def test_split_keeps_patients_apart():
    frames = list_frames(DATA)
    on_disk = (len(list((DATA / "hc18" / "images").glob("*.png")))
               + len(list((DATA / "hc18_test" / "images").glob("*.png"))) + 53 + 13)
    assert len(frames) == on_disk
    train, held = split(frames, seed=0)
    assert {f.group for f in train}.isdisjoint({f.group for f in held})
    assert all(f.source not in ("examples", "hc18_test") and f.group != CORD_GROUP
               for f in held)
    assert sum(f.group == CORD_GROUP for f in train) == 20
    assert {f.source for f in held} == {"hc18", "planes"}
    assert split(frames, seed=0) == (train, held)


@needs_data
def test_split_is_stable_when_patients_are_added():
    """A patient's side depends on the patient alone: the split of the first data folder
    (even HC18 ids only) is exactly the full split restricted to those patients, and its
    held-out side is still the 133 frames of 111 patients the 1.x models were judged on."""
    frames = list_frames(DATA)
    train, held = split(frames, seed=0)
    side = {f.group: f in held for f in train + held}
    first = [f for f in frames if f.source != "hc18" or int(f.group.split(":")[1]) % 2 == 0]
    old_train, old_held = split(first, seed=0)
    assert all(not side[f.group] for f in old_train) and all(side[f.group] for f in old_held)
    old_heads = [f for f in old_held if f.source == "hc18"]
    assert (len(old_heads), len({f.group for f in old_heads})) == (133, 111)


@needs_data
def test_clean_view_is_the_device_path_and_views_are_consistent():
    image = read_frame(DATA / "hc18" / "images" / "000_HC.png")
    roi = find_roi(image)
    t_spec, s_spec = PreprocessSpec(224, 288, scale=255.0), PreprocessSpec(112, 144)
    tv, sv = make_view(image, roi, None, (t_spec, s_spec), None)
    assert np.array_equal(tv, grey_resized(image, roi, t_spec))
    assert np.array_equal(sv, grey_resized(image, roi, s_spec))
    from quantize.data import AugmentSettings
    rng = np.random.default_rng(0)
    tv, sv = make_view(image, roi, rng, (t_spec, s_spec), AugmentSettings(flip=0.0))
    # Both nets see the same augmented view: the teacher's, area-resized, is the student's.
    import cv2
    down = cv2.resize(tv, (144, 112), interpolation=cv2.INTER_AREA).astype(float)
    assert np.corrcoef(down.ravel(), sv.astype(float).ravel())[0, 1] > 0.97


@needs_data
def test_framings_show_one_view_and_the_clean_one_is_the_device_path():
    """The teacher's target averages three framings of one augmented view: zoom 1.0 is the
    view, 0.92 the same content with 4% cut from every side. Clean, zoom 1.0 is exactly
    what the device computes; the same seed gives the same views."""
    import cv2

    from edge.models.roi import to_grey
    from quantize.data import AugmentSettings
    from quantize.distil import STUDENT_SPEC, render_framings

    image = read_frame(DATA / "sononet" / "examples" / "KIDNEYS.tiff")
    roi = find_roi(image)
    grey = to_grey(image)
    clean = render_framings(grey, roi, None, None, (1.0, 0.92, 1.08))
    assert np.array_equal(clean[0], grey_resized(image, roi, STUDENT_SPEC))
    aug = AugmentSettings(flip=0.0)
    views = render_framings(grey, roi, np.random.default_rng(5), aug, (1.0, 0.92), (0.7, 1.4))
    again = render_framings(grey, roi, np.random.default_rng(5), aug, (1.0, 0.92), (0.7, 1.4))
    assert all(np.array_equal(a, b) for a, b in zip(views, again, strict=True))
    h, w = views[0].shape
    dy, dx = round(h * 0.04), round(w * 0.04)
    inner = cv2.resize(views[0][dy: h - dy, dx: w - dx], (w, h), interpolation=cv2.INTER_AREA)
    assert np.corrcoef(inner.ravel().astype(float), views[1].ravel().astype(float))[0, 1] > 0.9
    assert not np.array_equal(views[0], clean[0])


def test_missing_data_dir_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from quantize.build_models import main

    monkeypatch.setenv("SONOEDGE_DATA", str(tmp_path / "nowhere"))
    assert main(["--build", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err and "not found" in err


@needs_data
def test_gate_passes_good_conversion_and_fails_broken_ones(tmp_path):
    """A tiny net fitted to a few real frames; int8 calibrated on real frames passes the
    gate, int8 calibrated on flat frames, on faint noise, or with perturbed weights fails."""
    from quantize.convert import export_fp32, quantize_int8
    from quantize.data import device_view
    from quantize.gate import INT8_VS_FP32_MIN, check, float_ops

    torch.manual_seed(0)
    spec = PreprocessSpec(56, 72)
    frames = list_frames(DATA)
    pick = ([f for f in frames if f.source == "planes"][::5]
            + [f for f in frames if f.source == "hc18"][::40])
    x = np.stack([normalise(device_view(read_frame(f.path), spec), spec)[None] for f in pick])
    model = PlaneStudent(((8,), (16,), (16,), (32,)), head_width=16)
    y = torch.arange(len(x)) % 5
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt = torch.from_numpy(x)
    for _ in range(120):
        loss = torch.nn.functional.cross_entropy(model(xt), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    fp32 = export_fp32(model, (1, 1, 56, 72), tmp_path / "fp32.tflite")
    good = quantize_int8(fp32, [xi[None] for xi in x[::2]], tmp_path / "good.tflite")
    result = check(good, fp32, x)
    assert result.passed, result.reason
    assert result.int8_vs_fp32 >= INT8_VS_FP32_MIN
    assert float_ops(good) == [] and float_ops(fp32)  # fully int8; the fp32 file is not
    not_int8 = check(fp32, fp32, x)
    assert not not_int8.passed and "not fully int8" in not_int8.reason

    # The twin that ships carries the class maps too (the page's heatmap), and answers
    # exactly as the model the gate just passed.
    from edge.models.runtime import open_model_file
    from quantize.convert import class_maps_outputs, with_class_maps

    twin = with_class_maps(model, [xi[None] for xi in x[::2]], good,
                           tmp_path / "maps_fp32.tflite", tmp_path / "maps.tflite")
    declared = class_maps_outputs(twin)
    assert [o["name"] for o in declared] == ["logits", "class_maps"]
    assert declared[1]["shape"][:2] == declared[0]["shape"] == [1, 14]  # a map per class
    both, plain = open_model_file(twin, "litert", 2, declared), open_model_file(good)
    for xi in x:
        out = both.run_all(xi[None])
        assert np.array_equal(out["logits"], plain.run(xi[None]))
        step = both._outputs["class_maps"]["quantization"][0]
        assert np.allclose(out["class_maps"].mean(axis=(2, 3)), out["logits"],
                           atol=3 * step + both._outputs["logits"]["quantization"][0])
    assert float_ops(twin) == []

    flat = quantize_int8(fp32, [np.zeros((1, 1, 56, 72), np.float32)] * 4,
                         tmp_path / "flat.tflite")
    rng = np.random.default_rng(0)
    noise = quantize_int8(fp32, [rng.normal(0, 0.05, (1, 1, 56, 72)).astype(np.float32)
                                 for _ in range(4)], tmp_path / "noise.tflite")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.std())
    fp32_bad = export_fp32(model, (1, 1, 56, 72), tmp_path / "perturbed_fp32.tflite")
    perturbed = quantize_int8(fp32_bad, [xi[None] for xi in x[::2]],
                              tmp_path / "perturbed.tflite")
    for broken in (flat, noise, perturbed):
        bad = check(broken, fp32, x)
        assert not bad.passed and "below the gate" in bad.reason, (broken.name, bad)


SHIPPED = REPO / "models" / "plane_student.json"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped plane_student yet")
def test_shipped_student_manifest_and_budget():
    from edge.models.manifest import read_manifest, verify

    man = read_manifest(SHIPPED)
    verify(man)
    raw = json.loads(SHIPPED.read_text())
    assert raw["input"]["dtype"] == raw["output"]["dtype"] == "int8"
    assert raw["output"]["kind"] == "logits"
    assert raw["size_bytes"] <= 1_000_000
    assert raw["architecture"]["macs"] * 4 <= raw["architecture"]["teacher_macs"]
    gate = raw["quantization"]["gate"]
    assert gate["value"] >= gate["threshold"]
    from quantize.gate import float_ops

    assert float_ops(man.model_path) == []  # fully int8, input and output included


@needs_data
@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped plane_student yet")
def test_shipped_student_names_the_13_examples_through_the_device_path():
    """v1.0.0 named all 13 (it was trained with CE on their true labels). v1.1.0 is tuned
    to answer like the teacher, which through this path calls LIPS Background itself; it
    also says RVOT on the 3VV screen (the teacher says 3VV: a real miss, reported in the
    manifest). The test pins exactly that: 11 named, the two misses the manifest lists."""
    from edge.models.manifest import read_manifest
    from quantize.convert import run_tflite
    from quantize.data import EXAMPLE_LABELS, LABELS

    man = read_manifest(SHIPPED)
    spec = man.preprocessing
    names = list(EXAMPLE_LABELS)
    x = []
    for stem in names:
        image = read_frame(DATA / "sononet" / "examples" / f"{stem}.tiff")
        x.append(normalise(grey_resized(image, find_roi(image), spec), spec)[None])
    pred = run_tflite(man.model_path, np.stack(x)).argmax(1)
    wrong = sorted(f"{s}.tiff" for s, p in zip(names, pred, strict=True)
                   if LABELS[p] != EXAMPLE_LABELS[s])
    listed = json.loads(SHIPPED.read_text())["metrics"]["examples_13_correct_int8"]
    assert wrong == sorted(listed["wrong"]) and listed["value"] == 13 - len(wrong)
    assert len(wrong) <= 2 and set(wrong) <= {"3VV.tiff", "LIPS.tiff"}


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped plane_student yet")
def test_the_shipped_student_calls_a_flat_screen_background_as_the_teacher_does():
    """The probe in the air: a black screen, or one flat grey. Through the device's scorer
    the shipped student says Background there, as SonoNet-16 does (0.68)."""
    import time

    from edge.capture.sources import Frame
    from edge.config import load_settings
    from edge.scorer import make_scorer

    scorer = make_scorer(load_settings())
    for level in (0, 40):
        frame = Frame("flat", 0, np.full((540, 800, 3), level, np.uint8), time.monotonic(),
                      time.time())
        assert scorer.score(frame).plane == "Background", level


def test_the_build_ships_only_a_student_no_worse_on_sweeps_and_examples_and_better_on_one():
    from quantize.build_models import ship_decision

    # sweeps: (clean head chosen, of those captured)
    assert ship_decision((170, 160), (175, 160), 13, 10)[0] is False  # fewer clean heads
    assert ship_decision((190, 180), (175, 170), 12, 13)[0] is False  # fewer examples named
    assert ship_decision((175, 170), (175, 170), 10, 10)[0] is False  # better on neither
    assert ship_decision((175, 170), (175, 170), 13, 10) == (True, "")
    assert ship_decision((180, 172), (175, 170), 13, 13) == (True, "")  # more, examples kept
    assert ship_decision((182, 175), (175, 170), 13, 13, 8, 0)[0] is False  # a chest as head
    assert ship_decision((5, 5), None, 0, None) == (True, "")  # nothing shipped yet
    # More clean choices, but fewer of them good enough to capture: the midwife would be
    # told to improve a frame that was good enough before.
    kept, why = ship_decision((206, 186), (204, 193), 13, 13, 0, 0, True, False)
    assert kept is False and "186 of them captured" in why
    # The heatmap is the last count: gaining maps that show the head, all else kept, ships;
    # losing them does not, whatever else it gains.
    assert ship_decision((188, 180), (188, 180), 13, 13, 0, 0, True, False) == (True, "")
    assert ship_decision((188, 180), (188, 180), 13, 13, 0, 0, False, False)[0] is False
    kept, why = ship_decision((190, 182), (188, 180), 13, 13, 0, 0, False, True)
    assert kept is False and "heatmap" in why


def test_the_build_ships_no_student_under_the_variants_floor_the_issue_sets():
    """A rebuild on 4 December passed every count of the ship rule (210 clean sweeps against
    207) yet named Background in only 44 of its 50 variants, under the issue's 90%: the
    rule now reads the variants too. The shipped 1.4.0's own rows pass it."""
    from quantize.build_models import ship_decision, variants_shortfall
    from quantize.variants import LABELS

    shipped = json.loads((REPO / "models" / "plane_student.json").read_text())
    rows = shipped["metrics"]["variants_top1_agreement_int8_vs_teacher"]["rows"]
    assert variants_shortfall(rows, LABELS) == ""
    rebuilt = {**rows, "Background": {**rows["Background"], "true": 44},
               "all variants": {**rows["all variants"], "true": 694}}
    short = variants_shortfall(rebuilt, LABELS)
    assert "Background 44/50" in short and "Lips" not in short
    kept, why = ship_decision((210, 199), (207, 199), 13, 13, 0, 0, True, True, True, short)
    assert kept is False and "Background 44/50" in why
    # overall fewer true planes than the teacher names is refused too, whatever the classes
    below = {**rows, "all variants": {**rows["all variants"], "true": 500}}
    assert "against the teacher's" in variants_shortfall(below, LABELS)
    # A student that names a flat frame (the probe in the air) otherwise than the teacher
    # does is not shipped, whatever it gains.
    kept, why = ship_decision((210, 200), (188, 180), 13, 13, 0, 0, True, False, False)
    assert kept is False and "flat frame" in why


def test_the_map_shape_term_asks_where_the_named_planes_map_peaks_not_its_level():
    from dataclasses import replace

    from quantize.distil import MAP_STAGE, TrainSettings, distil_loss, settings_stamp

    torch.manual_seed(0)
    t_maps = torch.randn(4, 14, 14, 18)
    t_logits = t_maps.mean(dim=(2, 3))
    top = t_logits.argmax(1)
    off, on = TrainSettings(), replace(TrainSettings(), **MAP_STAGE)
    # The same maps shifted by a constant: the MSE term sees a difference, the shape none.
    shifted = t_maps + 3.0
    base = distil_loss(t_logits, shifted, t_logits, t_maps, off, 1.0, t_view_top1=top)
    same_shape = distil_loss(t_logits, shifted, t_logits, t_maps, on, 1.0, t_view_top1=top)
    assert float(same_shape) == pytest.approx(float(base), abs=1e-5)
    moved = torch.roll(shifted, shifts=7, dims=3)  # the peak elsewhere
    assert float(distil_loss(t_logits, moved, t_logits, t_maps, on, 1.0, t_view_top1=top)) \
        > float(distil_loss(t_logits, moved, t_logits, t_maps, off, 1.0, t_view_top1=top))
    # Checkpoints of runs without the term keep the stamp they were made with.
    assert "map_shape_weight" not in settings_stamp(off)
    assert "head_weight" not in settings_stamp(off)  # the 1,600-4,000-step runs predate it
    assert settings_stamp(replace(off, head_weight=0.7))["head_weight"] == 0.7
    assert settings_stamp(on)["map_shape_weight"] == MAP_STAGE["map_shape_weight"]


def test_flat_rows_teach_the_student_the_teachers_answer_on_a_flat_frame(tmp_path):
    """No cached view is flat, so nothing holds a student's answer on the probe in the air.
    Trained on views the teacher calls Abdominal, a student calls a flat frame Abdominal
    too; with flat rows in every batch it says what the teacher says there: Background."""
    from dataclasses import replace

    from quantize.distil import TrainSettings, settings_stamp, train_student
    from quantize.specs import STUDENT_SPEC

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 16, stride=16)
            self.head = torch.nn.Conv2d(8, 14, 1)

        def forward_maps(self, x):
            maps = self.head(torch.relu(self.conv(x)))
            maps = torch.nn.functional.adaptive_avg_pool2d(maps, (14, 18))
            return maps.mean(dim=(2, 3)), maps

        def forward(self, x):
            return self.forward_maps(x)[0]

    abdominal, background = LABELS.index("Abdominal"), LABELS.index("Background")
    rng = np.random.default_rng(0)
    n, h, w = 24, STUDENT_SPEC.height, STUDENT_SPEC.width
    maps = np.full((n, 14, 14, 18), -2.0, np.float32)
    maps[:, abdominal] = 2.0
    cache = {"student": rng.integers(0, 255, (n, h, w), dtype=np.uint8),
             "logits": maps.mean(axis=(2, 3)), "maps": maps,
             "label": np.full(n, -1, np.int16)}
    flat_maps = np.full((14, 14, 18), -2.0, np.float32)
    flat_maps[background] = 2.0
    flat = (flat_maps.mean(axis=(1, 2)), flat_maps)
    settings = replace(TrainSettings(), steps=60, batch=8, lr=0.05, warmup=1,
                       low_res_steps=0, eval_every=1000)
    said = {}
    for rows in (0, 2):
        torch.manual_seed(0)
        student = train_student(Tiny(), cache, tmp_path / f"tiny-{rows}.pt", 0,
                                replace(settings, flat_rows=rows), flat_targets=flat)
        with torch.no_grad():
            said[rows] = int(student(torch.zeros(1, 1, h, w)).argmax())
    assert said == {0: abdominal, 2: background}
    assert "flat_rows" not in settings_stamp(settings)
    assert settings_stamp(replace(settings, flat_rows=2))["flat_rows"] == 2
    with pytest.raises(ValueError, match="flat_targets"):
        train_student(Tiny(), cache, tmp_path / "none.pt", 0, replace(settings, flat_rows=2))


def test_the_head_plane_term_moves_a_known_head_to_the_head_planes_in_the_teachers_split():
    from quantize.distil import soft_targets

    cb, tv, bg = LABELS.index("Brain (Cb.)"), LABELS.index("Brain (Tv.)"), \
        LABELS.index("Background")
    logits = torch.full((2, len(LABELS)), -9.0)
    logits[:, bg], logits[:, tv], logits[:, cb] = 3.0, 1.0, 0.0  # the teacher: Background
    none = torch.tensor([-1, -1])
    heads = torch.tensor([True, False])
    p = soft_targets(logits, 1.0, none, 0.7, heads, 0.7)
    assert p[0].argmax() == tv and p[1].argmax() == bg  # only the known head moves
    assert torch.allclose(p.sum(1), torch.ones(2))
    teacher = torch.softmax(logits[0], 0)
    # The head planes keep the teacher's split between them.
    assert torch.isclose(p[0, tv] / p[0, cb], teacher[tv] / teacher[cb], rtol=1e-3)
    assert torch.equal(soft_targets(logits, 1.0, none, 0.7, heads, 0.0), soft_targets(
        logits, 1.0, none, 0.7))  # weight 0: the teacher's answer, as up to 1.2.0


@needs_data
def test_export_teacher_fp32_writes_a_verified_manifest(tmp_path, monkeypatch):
    from edge.models.manifest import read_manifest, verify
    from quantize.export import export_teacher_fp32

    monkeypatch.setenv("SONOEDGE_DATA", str(DATA))
    path = export_teacher_fp32(tmp_path / "bench")
    man = read_manifest(path.with_suffix(".json"))
    verify(man)
    assert man.task == "plane_classification" and man.output_kind == "logits"
    assert man.input_shape == (1, 1, 224, 288) and man.preprocessing.scale == 255.0
    assert export_teacher_fp32(tmp_path / "bench") == path  # reused, not rebuilt


@pytest.mark.parametrize("args,needle", [
    (["--head-weight", "-1"], "--head-weight -1.0"),
    (["--head-weight", "nan"], "--head-weight nan"), (["--head-weight", "1"], "below 1"),
    (["--steps", "0"], "--steps 0"),
    (["--threads", "0"], "--threads 0"),
    (["--views-per-frame", "0"], "--views-per-frame 0"),
    (["--views-per-frame", "1000"], "must be 1 to 64"),
    (["--maps-from", "5000", "--continue-from", "4000", "--steps", "400"], "--maps-from 5000"),
    (["--maps-from", "0", "--steps", "400"], "--maps-from 0"),
    (["--feature-weight", "-1"], "--feature-weight -1.0"),
    (["--feature-weight", "inf"], "--feature-weight inf"),
    (["--feature-weight", "4", "--low-res-steps", "200"], "not with --low-res-steps")])
def test_a_build_with_senseless_numbers_is_one_line_before_any_work(args, needle, capsys):
    from quantize.build_models import main

    assert main([*args, "--build", "/nonexistent/never-made"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and not Path("/nonexistent").exists()


@needs_data
def test_class_maps_are_judged_by_where_the_named_planes_map_peaks(monkeypatch):
    """The build ships the heatmap only if the named plane's map peaks inside the
    sonographer's head ellipse: a map peaking at the region's corner never does, one
    peaking at its centre does on centred heads, and frames without an annotation are not
    judged."""
    import edge.models.runtime as runtime
    import quantize.convert as convert
    from quantize.class_maps import head_mask, peaks_in_head

    frames = [f for f in list_frames(DATA) if f.source == "hc18"][:6]
    frames += [f for f in list_frames(DATA) if f.source == "planes"][:2]
    peak = {"cell": (0, 0)}

    class Fake:
        def run_all(self, x):
            maps = np.zeros((1, 14, 14, 18), np.float32)
            maps[0, 4][peak["cell"]] = 5.0
            logits = np.zeros((1, 14), np.float32)
            logits[0, 4] = 1.0
            return {"logits": logits, "class_maps": maps}

    monkeypatch.setattr(runtime, "open_model_file", lambda *a, **k: Fake())
    monkeypatch.setattr(convert, "class_maps_outputs", lambda path: [])
    assert peaks_in_head(Path("fake.tflite"), frames) == (0, 6)
    peak["cell"] = (7, 9)
    inside, judged = peaks_in_head(Path("fake.tflite"), frames)
    assert judged == 6 and inside >= 5
    mask = head_mask(frames[0], read_frame(frames[0].path).shape)
    assert 0.02 < mask.mean() < 0.9


def test_latency_figures_name_the_int8_instructions_of_their_cpu(tmp_path):
    """An int8 ratio means little without the CPU's int8 instructions: the Xeon here has
    AVX-512 VNNI, the AMD EPYC box of issue 13 none, a Pi 5 arm64 dot products."""
    from quantize.manifest import cpu_description

    def cpu(text: str) -> str:
        (tmp_path / "cpuinfo").write_text(text)
        return cpu_description(tmp_path / "cpuinfo")

    assert cpu("model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f "
               "avx512_vnni\n") == "Intel(R) Xeon(R) Processor, AVX2, AVX-512 VNNI"
    assert cpu("model name\t: AMD EPYC 7B13\nflags\t\t: fpu avx avx2 fma\n"
               ) == "AMD EPYC 7B13, AVX2, no VNNI"
    assert cpu("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 atomics fphp asimdhp "
               "asimdrdm lrcpc dcpop asimddp\nCPU part\t: 0xd0b\n\nModel\t\t: Raspberry Pi 5 "
               "Model B Rev 1.0\n") == "Raspberry Pi 5 Model B Rev 1.0, dot product"
    assert cpu("\x00\xff garbage without a colon\n").endswith("no VNNI")  # never a traceback


def test_plane_student_training_stopped_midway_resumes_to_the_weights_of_an_unbroken_run(
        tmp_path, monkeypatch):
    """The plane stages of `make models` are resumable as the segmenter's are: stopped after
    a checkpoint and started again, the student ends bit for bit where an unbroken run
    does. The views are real HC18 frames; the teacher's answers are seeded stand-ins, since
    what is specified is the loop, not the targets."""
    import cv2

    from quantize import distil
    from quantize.data import data_dir

    images = sorted((data_dir() / "hc18" / "images").glob("1??_HC.png"))[:6]
    views = np.stack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (288, 224),
                                 interpolation=cv2.INTER_AREA) for p in images])
    rng = np.random.default_rng(5)
    cache = {"student": views, "logits": rng.normal(size=(6, 14)).astype(np.float16),
             "maps": rng.normal(size=(6, 14, 14, 18)).astype(np.float16),
             "label": np.full(6, -1)}
    settings = distil.TrainSettings(steps=4, batch=3, warmup=1, eval_every=2)

    def student() -> MobileStudent:  # as build_models makes it: seeded, then built
        torch.manual_seed(0)
        return MobileStudent()

    unbroken = distil.train_student(student(), cache, tmp_path / "a.pt", 0, settings)

    calls = []
    real_norm = distil._norm_batch

    def dies_on_the_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("the power went")
        return real_norm(*args, **kwargs)

    monkeypatch.setattr(distil, "_norm_batch", dies_on_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        distil.train_student(student(), cache, tmp_path / "b.pt", 0, settings)
    monkeypatch.setattr(distil, "_norm_batch", real_norm)
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 2
    resumed = distil.train_student(student(), cache, tmp_path / "b.pt", 0, settings)
    for (name, a), (_, b) in zip(unbroken.state_dict().items(), resumed.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="b.pt: checkpoint was made with other settings"):
        distil.train_student(student(), cache, tmp_path / "b.pt", 0,
                             distil.TrainSettings(steps=6, batch=3, warmup=1, eval_every=2))


@needs_data
def test_the_feature_term_draws_the_students_hidden_layer_to_the_teachers(tmp_path):
    """The feature term's target is the teacher's own hidden layer, from which its class
    maps are one layer away; training on it brings the student's (through the adapter)
    closer to the teacher's on real heads, and a run with it resumes with its adapter."""
    from dataclasses import replace

    import cv2

    from quantize import distil
    from quantize.data import data_dir
    from quantize.teacher import load_teacher, teacher_targets

    teacher = load_teacher(data_dir() / "sononet" / "SonoNet16.npz")
    images = sorted((data_dir() / "hc18" / "images").glob("1??_HC.png"))[:6]
    views = np.stack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (288, 224),
                                 interpolation=cv2.INTER_AREA) for p in images])
    hidden = distil.teacher_hidden(teacher, views)
    logits, maps = teacher_targets(teacher, views)
    assert hidden.shape == (6, 64, 14, 18) and hidden.dtype == np.float16
    with torch.inference_mode():
        again = teacher.adaptation[1](torch.from_numpy(hidden.astype(np.float32))).numpy()
    assert np.abs(again - maps).max() < 0.05 * np.abs(maps).max()

    cache = {"student": views, "logits": logits.astype(np.float16),
             "maps": maps.astype(np.float16), "label": np.full(6, -1)}
    settings = distil.TrainSettings(steps=60, batch=6, lr=1e-2, warmup=1, eval_every=30,
                                    feature_weight=1.0)
    stamp = distil.settings_stamp(settings)
    assert stamp["feature_weight"] == 1.0
    assert "feature_weight" not in distil.settings_stamp(distil.TrainSettings())

    def distance(ckpt: Path, student: MobileStudent) -> float:
        adapter = torch.nn.Conv2d(64, 64, 1)
        adapter.load_state_dict(torch.load(ckpt, weights_only=False)["adapter"])
        with torch.inference_mode():
            from quantize.specs import STUDENT_SPEC, norm_batch
            got = adapter(student.eval().forward_hidden(norm_batch(views, STUDENT_SPEC))[2])
        return float(((got - torch.from_numpy(hidden.astype(np.float32))) ** 2).mean())

    torch.manual_seed(0)
    short = distil.train_student(MobileStudent(), cache, tmp_path / "short.pt", 0,
                                 replace_steps(settings, 1), hidden=hidden)
    torch.manual_seed(0)
    trained = distil.train_student(MobileStudent(), cache, tmp_path / "long.pt", 0, settings,
                                   hidden=hidden)
    assert distance(tmp_path / "long.pt", trained) < 0.5 * distance(tmp_path / "short.pt",
                                                                    short)
    # stopped after its first checkpoint and started again: bit for bit the unbroken run,
    # its adapter included. On 4 steps with a checkpoint every 2, as the plane student's
    # resume test: what is checked is the checkpoint and its reading back, not the count
    # (the 60 steps above are for the distance: 30 leave it at 0.91 of the 1-step run's),
    # and the 60-step run cut at 30 and resumed was 60 of the test's 121 steps. An adapter
    # or optimiser state not kept, or not read back, shows after 2 steps (AdamW, lr 1e-2).
    resume = replace(settings, steps=4, eval_every=2)
    torch.manual_seed(0)
    unbroken = distil.train_student(MobileStudent(), cache, tmp_path / "whole.pt", 0,
                                    resume, hidden=hidden)
    calls, real_norm = [], distil._norm_batch

    def dies_after_the_checkpoint(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("the power went")
        return real_norm(*args, **kwargs)

    distil._norm_batch = dies_after_the_checkpoint
    try:
        torch.manual_seed(0)
        with pytest.raises(KeyboardInterrupt):
            distil.train_student(MobileStudent(), cache, tmp_path / "cut.pt", 0, resume,
                                 hidden=hidden)
    finally:
        distil._norm_batch = real_norm
    assert torch.load(tmp_path / "cut.pt", weights_only=False)["step"] == 2
    torch.manual_seed(0)
    resumed = distil.train_student(MobileStudent(), cache, tmp_path / "cut.pt", 0,
                                   resume, hidden=hidden)
    for (name, a), (_, b) in zip(unbroken.state_dict().items(), resumed.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    adapters = [torch.load(tmp_path / f, weights_only=False)["adapter"]
                for f in ("whole.pt", "cut.pt")]
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    with pytest.raises(ValueError, match="hidden layer"):
        distil.train_student(MobileStudent(), cache, tmp_path / "none.pt", 0, settings)


def replace_steps(settings, steps: int):
    from dataclasses import replace

    return replace(settings, steps=steps, eval_every=steps)
