"""Self-test: the new models, through the device's own scorer, on the frames in the bundle.

The bundle carries a few frames and what the district's machine got on them with these very
models (plane, confidence, quality score, head status and HC), with tolerances, the quality
rules version it scored them with (`MADE_WITH_MEMBER`) and the learned quality head's own
severities (`LEARNED_MEMBER`). The device scores the same frames from the staged slot under
its own quality rules, the ones its loop runs (`[quality] rules`), and compares: the
quality score only under the same rules version, since a rules change moves it whatever
the models (and fleets are always mixed); the learned head's severities, the models' own
numbers, under any rules.
It runs in a child process (`python -m edge.fleet.selftest`) with a time limit: a model
that crashes or hangs the runtime fails the test, never the loop that is still scoring
with the current set.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from wire.fleet import (
    LEARNED_MEMBER,
    MADE_WITH_MEMBER,
    MAX_LEARNED_BYTES,
    MAX_MADE_WITH_BYTES,
    BundleError,
    BundleManifest,
    parse_learned,
    parse_made_with,
    parse_version,
)
from wire.schema import PayloadError, read_regular_file
from wire.shown import shown_path

PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4  # linux/prctl.h
# A child ended by one of these was stopped from outside (`systemctl stop` sends SIGTERM to
# the whole cgroup, a closed terminal SIGHUP, Ctrl-C SIGINT): the device's doing, not the
# bundle's, so the bundle is tried again later. A model that crashes the runtime ends it
# itself (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT): that fails the test, and so does
# SIGKILL, the OOM killer's signal (a model too big for the box's memory would otherwise be
# fetched and tried again every poll for ever, beside the midwife's scan: the review).
OUTSIDE_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
LINUX_CAPABILITY_VERSION_3 = 0x20080522  # linux/capability.h: two 32-bit words per set


def _outputs(record: dict) -> dict:
    quality = record.get("quality") or {}
    head = record.get("head") or {}
    bio = record.get("biometry") or {}
    out = {"plane": record.get("plane") or "",
           "plane_confidence": record.get("plane_confidence"),
           "quality_score": quality.get("score")}
    if record.get("head") is not None:
        out["head_status"] = str(head.get("status") or "")
    if record.get("biometry") is not None:
        out["hc_mm"] = bio.get("hc_mm")
    out = {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
    if quality.get("learned"):  # the learned head's severities (`split_learned`)
        out["learned"] = dict(quality["learned"])
    return out


def split_learned(outputs: list[dict]) -> tuple[list[dict], list[dict]]:
    """`score_selftest`'s outputs -> (each frame's expectations, as the manifest holds them;
    each frame's learned head's severities, {} where none ran)."""
    expects = [{k: v for k, v in out.items() if k != "learned"} for out in outputs]
    return expects, [dict(out.get("learned") or {}) for out in outputs]


def _settings(models_dir: Path, pixel_size_mm: float, num_threads: int, names: dict | None):
    """The scorer's settings for a self-test (and for `bundle make`'s expectations)."""
    from edge.config import load_settings

    names = names or {}
    overrides = {"models": {"dir": str(models_dir), "num_threads": num_threads,
                            "backend": names.get("backend"), "plane": names.get("plane")},
                 "biometry": {"pixel_size_mm": float(pixel_size_mm),
                              "segmenter": names.get("segmenter")},
                 # the box's own quality rules, the loop's ("" or none: the shipped file)
                 "quality": {"learned": names.get("learned"),
                             "rules": names.get("rules") or None}}
    return load_settings(None, overrides)


def score_selftest(models_dir: Path, pictures: list[Path], pixel_size_mm: float,
                   num_threads: int = 1, names: dict | None = None) -> list[dict]:
    """What the models in `models_dir` give on each picture (the self-test's outputs; the
    learned head's severities under "learned", `split_learned`)."""
    from edge.capture.sources import open_sources
    from edge.scorer import make_scorer, timed_frames

    scorer = make_scorer(_settings(models_dir, pixel_size_mm, num_threads, names))
    outputs = []
    with open_sources([str(p) for p in pictures]) as source:
        for frame, capture_s in timed_frames(source, scorer.prepare_frame):
            record = scorer.score(frame, capture_s).to_dict()
            if record.get("error"):
                raise ValueError(f"{frame.source}: {record['error']}")
            outputs.append(_outputs(record))
    if len(outputs) != len(pictures):
        raise ValueError(f"scored {len(outputs)} of {len(pictures)} self-test frames")
    return outputs


def rules_version(models_dir: Path, names: dict | None = None) -> str | None:
    """The version of the quality rules `score_selftest` judges frames by (the loader
    `make_scorer` uses, on the same settings: the box's `[quality] rules` where `names`
    gives them); None with the audit off."""
    from edge.models.quality import load_rules

    quality = _settings(models_dir, 0.0, 1, names).quality
    return load_rules(quality.rules or None).version if quality.enabled else None


def rules_said(version: str | None, names: dict | None) -> str:
    """Which quality rules the self-test scored with, in words: "2.0.1 (its
    [quality] rules, clinic.toml)" or "1.3.9 (the rules sonoedge ships)"."""
    rules = (names or {}).get("rules") or ""
    where = (f"its [quality] rules, {shown_path(Path(rules).name, 60)}" if rules
             else "the rules sonoedge ships")
    return f"{version or 'none (audit off)'} ({where})"


def _record(slot: Path, manifest: BundleManifest, member: str, limit: int) -> bytes | None:
    """A signed record member's bytes, read bounded; None where the bundle has none (made
    before it was recorded). `BundleError` (one line) where it cannot be read."""
    if manifest.file(member) is None:
        return None
    try:
        data, _ = read_regular_file(slot / member, limit)
    except PayloadError as exc:
        raise BundleError(f"{member}: {exc}") from None
    return data


def learned_record(slot: Path, manifest: BundleManifest) -> dict | None:
    """The learned head's severities the bundle recorded per frame; None for a bundle made
    before they were. `BundleError` (one line) for a bad record."""
    data = _record(slot, manifest, LEARNED_MEMBER, MAX_LEARNED_BYTES)
    return None if data is None else parse_learned(data, manifest.frames)


def made_with(slot: Path, manifest: BundleManifest) -> str | None:
    """The quality rules version the bundle's expectations were made with; None for a
    bundle made before it was recorded. `BundleError` (one line) for a bad record."""
    data = _record(slot, manifest, MADE_WITH_MEMBER, MAX_MADE_WITH_BYTES)
    return None if data is None else parse_made_with(data)


def remake_command(manifest: BundleManifest) -> str:
    """The `bundle make` that makes this bundle again, as new: a version above its own
    (this box refuses the one that failed here again), its group, app floor and scale."""
    parts = manifest.version.split(".")
    newer = (manifest.version + ".1" if len(parts) < 4 else
             ".".join(parts[:-1] + [str(int(parts[-1]) + 1)]))
    try:
        parse_version(newer)
    except BundleError:
        newer = f"ABOVE-{manifest.version}"
    return (f"sonoedge bundle make --models MODELS --key KEY --frames FRAMES --version "
            f"{newer} --group {manifest.group} --min-app {manifest.min_app_version} "
            f"--pixel-size {manifest.pixel_size_mm:g} --out NEW.bundle")


def quality_plan(bundle_rules: str | None, box_rules: str | None, box_said: str = "",
                 remake: str = "") -> tuple[bool, str]:
    """Whether the quality score is compared, and what to say beside it: why when it is
    not (`check_slot` makes it a note), else a hint for a failure. `box_said`: the rules
    the self-test scored with, in words (`rules_said`); `remake`: "<the bundle> again
    with ...", how to make it again.

    A rules change moves the score whatever the models (rules 1.3.9 did, for zoomed heads
    on a fixed calibration), so under another version it means nothing, while plane,
    confidence, head status and HC, the models', are still compared (and the learned
    head's severities, `check_slot`). A bundle that does not say (made before this was
    recorded) is compared as before: its rules are unknown, maybe this box's, and the
    score is all that checks the learned quality head's numbers; a refusal keeps the
    running models, and the hint names the rules and the command that makes it again."""
    box_said = box_said or (box_rules or "none (audit off)")
    if bundle_rules is None:
        return True, (f"the bundle does not name the quality rules it was made with, this "
                      f"box scores with {box_said}: make "
                      f"{remake or 'it again with a current sonoedge'}")
    if bundle_rules != box_rules:
        return False, f"made with quality rules {bundle_rules}, this box runs {box_said}"
    return True, f"same quality rules {bundle_rules}"


def compare(expected: dict, got: dict, tolerance: dict) -> list[str]:
    """What differs beyond the tolerance, one short phrase each: what this device got,
    then what the bundle expects (a bare "X vs Y" left the reader to guess which was which)."""
    bad = []
    for key, want in expected.items():
        have = got.get(key)
        if key in tolerance and want is not None and have is not None:
            if abs(float(have) - float(want)) > tolerance[key]:
                bad.append(f"{key} {have} here, the bundle expects {want} "
                           f"(+-{tolerance[key]:g})")
        elif have != want:
            bad.append(f"{key} {have!r} here, the bundle expects {want!r}")
    return bad


def check_slot(slot: Path, manifest: BundleManifest, num_threads: int = 1,
               names: dict | None = None, bundle: str = ""
               ) -> tuple[list[str], list[str], str]:
    """Score the slot's self-test frames with its models under the box's own quality rules:
    (the failures, [] when it passed; the notes: what was not compared and why; which
    rules it scored with, `rules_said`). `bundle`: its file's name, for the lines.

    The learned head's recorded severities are compared within the quality score's
    tolerance under any rules: under other rules they are all that checks that head's
    numbers. Where neither is possible, the note says its numbers were not checked."""
    pictures = [slot / f.path for f in manifest.frames]
    bundle_rules = made_with(slot, manifest)  # a bad record is its own line (BundleError)
    recorded = learned_record(slot, manifest)  # and so is this one
    remake = f"bundle {manifest.version}" + (
        f" ({shown_path(Path(bundle).name, 80)})" if bundle else "")
    remake += f" again with a current sonoedge: `{remake_command(manifest)}`"
    try:
        box_rules = rules_version(slot / "models", names)
        box_said = rules_said(box_rules, names)
        compared, said = quality_plan(bundle_rules, box_rules, box_said, remake)
        outputs = score_selftest(slot / "models", pictures, manifest.pixel_size_mm,
                                 num_threads, names)
    except Exception as exc:  # any failure to load or score is the test failing
        return [f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"], \
            [], ""
    runs_learned = bool(_settings(slot / "models", 0.0, 1, names).quality.learned)
    tol = manifest.tolerance["quality_score"]
    failures, checked = [], 0
    for frame, got in zip(manifest.frames, outputs, strict=True):
        got = dict(got)
        here = {f"learned:{k}": v for k, v in (got.pop("learned", None) or {}).items()}
        expect = {k: v for k, v in frame.expect.items()
                  if compared or k != "quality_score"}
        diff = [f"{d} ({said})" if d.startswith("quality_score ") else d
                for d in compare(expect, got, manifest.tolerance)]
        if recorded is not None and runs_learned:
            want = {f"learned:{k}": v for k, v in recorded.get(frame.path, {}).items()}
            checked += len(want)
            diff += compare(want, here, dict.fromkeys(want, tol))
        if diff:
            failures.append(f"{Path(frame.path).name}: {'; '.join(diff)}")
    if compared:
        return failures, [], box_said
    # what the district must read first (health keeps 160 characters): what was checked
    if not runs_learned:
        learned = " (this box runs no learned quality head)"
    elif recorded is None:
        learned = (", nor the learned quality head's numbers (the bundle records none; a "
                   "current `sonoedge bundle make` does)")
    elif not checked:
        learned = ", nor the learned quality head's numbers (none recorded for its frames)"
    else:
        learned = f", learned quality head compared instead ({checked} severities)"
    return failures, [f"quality score not compared{learned}: {said}"], box_said


class BoxFault(Exception):
    """The self-test could not judge the bundle for the device's own trouble, not the
    bundle's (slots.py makes it a DeviceFault: the bundle is tried again later)."""


class StoppedFromOutside(BoxFault):
    """The self-test's child was ended by a signal from outside (`OUTSIDE_SIGNALS`)."""


def run_selftest(slot: Path, timeout_s: float, num_threads: int = 1,
                 names: dict | None = None, bundle: str = ""
                 ) -> tuple[list[str], list[str], str]:
    """`check_slot` in a child process with a time limit: (the failures, [] when it passed;
    its notes; the rules it scored with). `StoppedFromOutside` when a signal from outside
    ended the child, `BoxFault` when the box's own quality rules do not load (its loop
    cannot start on them either: a good bundle must not be refused for it)."""
    from edge.models.quality import RulesError, load_rules

    try:
        load_rules((names or {}).get("rules") or None)
    except RulesError as exc:
        raise BoxFault(f"this box's quality rules do not load, so no self-test: "
                       f"{str(exc)[:200]}") from None
    cmd = [sys.executable, "-m", "edge.fleet.selftest", str(slot), "--threads",
           str(num_threads), "--names", json.dumps(names or {}), "--bundle", bundle]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[2])] + [p for p in [os.environ.get(
            "PYTHONPATH")] if p]))
    env.pop("NOTIFY_SOCKET", None)  # the child must never speak for the service
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return [f"self-test did not finish within {timeout_s:g} s"], [], ""
    if -done.returncode in OUTSIDE_SIGNALS:
        raise StoppedFromOutside(f"self-test stopped by {signal.Signals(-done.returncode).name} "
                          "from outside (not the bundle's fault)")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode not in (0, 1) or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return [f"self-test process ended with code {done.returncode}: {tail}"], [], ""
    try:
        verdict = json.loads(lines[-1])
        return (list(verdict["failures"]), [str(n)[:300] for n in verdict.get("notes", [])],
                str(verdict.get("rules", ""))[:120])
    except (ValueError, KeyError, TypeError, AttributeError):
        return ["self-test process gave no verdict"], [], ""


def drop_capabilities() -> None:
    """Leaves this process no capability. The service holds CAP_SYS_TIME, ambient, so the
    page can set the box's clock (edge/web/clock.py), and a child inherits it: a bundle's
    models under test need none of it. Best effort: where the calls are missing there was
    none to drop."""
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        libc.capset(ctypes.byref(Header(LINUX_CAPABILITY_VERSION_3, 0)), (Data * 2)())
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    from wire.fleet import MANIFEST_MEMBER, parse_manifest

    ap = argparse.ArgumentParser(prog="python -m edge.fleet.selftest")
    ap.add_argument("slot", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--names", default="{}")
    ap.add_argument("--bundle", default="")
    args = ap.parse_args(argv)
    drop_capabilities()
    try:
        os.nice(10)  # the loop scoring the clinic's frames comes first
    except OSError:
        pass
    try:
        manifest = parse_manifest((args.slot / MANIFEST_MEMBER).read_bytes(), 1 << 40)
        failures, notes, rules = check_slot(args.slot, manifest, args.threads,
                                            json.loads(args.names), args.bundle)
    except (OSError, ValueError) as exc:  # a BundleError is a ValueError
        failures, notes, rules = [str(exc)], [], ""
    print(json.dumps({"failures": failures, "notes": notes, "rules": rules}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
