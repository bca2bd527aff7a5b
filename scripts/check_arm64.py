"""Does the device install resolve on linux/aarch64 from wheels alone? (issue 16)

    python scripts/check_arm64.py [--glibc 2.31] [--python 3.11]

Asks pip to resolve the device's dependencies (pyproject's [project] dependencies, plus
sonoedge itself from this checkout) for CPython on aarch64 with `--only-binary=:all:`: a
package without an aarch64 wheel for that glibc, or one that would need a source build,
fails the resolution. pip matches an explicit platform tag exactly, so every manylinux tag
from 2.17 up to the target glibc is listed. The default 2.31 is the oldest target board
userland (Jetson JetPack 5, Ubuntu 20.04); Raspberry Pi OS bookworm has 2.36. Only the
packages' metadata is fetched (`--dry-run --report`), not the wheels.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def device_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return list(project["dependencies"])


def platforms(glibc: str) -> list[str]:
    major, minor = (int(x) for x in glibc.split("."))
    tags = ["manylinux2014_aarch64"]
    tags += [f"manylinux_{major}_{m}_aarch64" for m in range(17, minor + 1)]
    return tags


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="check_arm64", description=__doc__.split("\n\n")[0])
    ap.add_argument("--glibc", default="2.31")
    ap.add_argument("--python", default="3.11")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"2\.\d{2}", args.glibc):
        print(f"check_arm64: --glibc {args.glibc!r}: give 2.NN", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--only-binary=:all:", "--python-version", args.python, "--implementation",
               "cp", "--abi", f"cp{args.python.replace('.', '')}", "--target",
               str(Path(tmp) / "t"), "--report", str(report), "-q",
               "--disable-pip-version-check"]
        for tag in platforms(args.glibc):
            cmd += ["--platform", tag]
        done = subprocess.run(cmd + device_requirements(), capture_output=True, text=True,
                              timeout=900)
        if done.returncode != 0:
            errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")]
            print(f"check_arm64: the device install does not resolve on aarch64 (glibc "
                  f"{args.glibc}, Python {args.python}) from wheels: "
                  f"{(errors or ['pip failed'])[-1]}", file=sys.stderr)
            return 1
        installs = json.loads(report.read_text())["install"]
    needed = "2.17"
    for item in installs:
        url = item["download_info"]["url"]
        wheel = url.rsplit("/", 1)[-1]
        if not wheel.endswith(".whl"):
            print(f"check_arm64: {wheel} is not a wheel", file=sys.stderr)
            return 1
        # a wheel runs where any one of its tags does: its oldest glibc is what it needs
        tags = [int(m) for m in re.findall(r"manylinux_2_(\d+)_aarch64", wheel)]
        tags += [17] if "manylinux2014_aarch64" in wheel else []
        if tags and min(tags) > int(needed.split(".")[1]):
            needed = f"2.{min(tags)}"
        print(f"  {item['metadata']['name']:<24} {item['metadata']['version']:<10} {wheel}")
    print(f"check_arm64: {len(installs)} packages resolve as aarch64 wheels for CPython "
          f"{args.python} (glibc {args.glibc} or newer; the newest tag needed is "
          f"manylinux_{needed.replace('.', '_')}), no source build; "
          f"{time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
