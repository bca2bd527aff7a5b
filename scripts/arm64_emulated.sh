#!/usr/bin/env bash
# `make check-arm64-emulated`: `sonoedge score` on the 13 example screens under an emulated
# arm64 Debian, compared frame by frame with the same command on this machine (issue 16).
#
# How: debootstrap's first stage fetches Debian bookworm arm64 (Raspberry Pi OS's base) and
# its packages are unpacked with dpkg-deb (no second stage, so binfmt_misc is not needed);
# the aarch64 wheels of the device's dependencies are installed into it by this machine's
# pip (--platform, wheels only); qemu-aarch64-static runs its python3.11 on this checkout.
# qemu-user 7.2 passes the host's /proc/cpuinfo through, and the CPU detection of LiteRT's
# XNNPACK crashes on an x86 one, so a private mount namespace shows a Cortex-A76 (Pi 5;
# ARM64_CPU=cortex-a72 for a Pi 4) /proc/cpuinfo, and qemu emulates that very core.
# Needs root (debootstrap, unshare -m). The rootfs is cached under build/arm64-rootfs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ARM64_ROOT:-build/arm64-rootfs}
OUT=build/arm64
CPU=${ARM64_CPU:-cortex-a76}
DATA=${SONOEDGE_DATA:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
if [ "$(id -u)" -ne 0 ]; then
  echo "arm64_emulated: needs root (debootstrap, a private mount namespace)" >&2; exit 2
fi
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends qemu-user-static debootstrap
fi
t0=$(date +%s)
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  rm -rf "$ROOT"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3.11 bookworm "$ROOT" \
    > "$OUT/debootstrap.log"
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
fi
t1=$(date +%s)
if [ ! -f "$ROOT/opt/site/.stamp" ] || [ pyproject.toml -nt "$ROOT/opt/site/.stamp" ]; then
  rm -rf "$ROOT/opt/site"
  mapfile -t deps < <("$PY" -c 'import tomllib; [print(d) for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]]')
  plats=(--platform manylinux2014_aarch64)
  for m in $(seq 17 36); do plats+=(--platform "manylinux_2_${m}_aarch64"); done
  "$PY" -m pip install -q --disable-pip-version-check --only-binary=:all: "${plats[@]}" \
    --python-version 3.11 --implementation cp --abi cp311 --target "$ROOT/opt/site" \
    "${deps[@]}" 2>&1 | grep -v -e "^WARNING" -e "dependency resolver" -e "requires" || true
  touch "$ROOT/opt/site/.stamp"
fi
t2=$(date +%s)
case "$CPU" in
  cortex-a76) part=0xd0b; variant=0x4; features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
  cortex-a72) part=0xd08; variant=0x0; features="fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid" ;;
  *) echo "arm64_emulated: ARM64_CPU is cortex-a76 or cortex-a72" >&2; exit 2 ;;
esac
possible=$(cat /sys/devices/system/cpu/possible)
last=${possible##*-}
: > "$OUT/cpuinfo"
for n in $(seq 0 "$last"); do
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: 1\n\n' \
    "$n" "$features" "$variant" "$part" >> "$OUT/cpuinfo"
done
"$PY" -m edge.cli score "$DATA/sononet/examples" > "$OUT/score-x86.jsonl" 2>/dev/null || true
t3=$(date +%s)
unshare -m sh -c "mount --bind '$OUT/cpuinfo' /proc/cpuinfo && exec qemu-aarch64-static \
  -cpu $CPU -L '$ROOT' -E LD_LIBRARY_PATH=/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu \
  -E PYTHONPATH=/opt/site:$PWD -E HOME=/tmp '$ROOT/usr/bin/python3.11' \
  -m edge.cli score '$DATA/sononet/examples'" > "$OUT/score-arm64.jsonl" 2> "$OUT/score-arm64.err" || true
t4=$(date +%s)
"$PY" - "$OUT" "$CPU" "$((t1 - t0))" "$((t2 - t1))" "$((t4 - t3))" <<'PYEOF'
import json, sys
out, cpu, rootfs_s, wheels_s, score_s = sys.argv[1:]
def load(name):
    return [json.loads(l) for l in open(f"{out}/{name}") if l.startswith("{")]
x86, arm = load("score-x86.jsonl"), load("score-arm64.jsonl")
same = [a["plane"] == b["plane"] for a, b in zip(x86, arm)]
conf = max((abs((a["plane_confidence"] or 0) - (b["plane_confidence"] or 0))
            for a, b in zip(x86, arm)), default=None)
qual = max((abs(((a.get("quality") or {}).get("score") or 0) - ((b.get("quality") or {}).get("score") or 0))
            for a, b in zip(x86, arm)), default=None)
for a, b in zip(x86, arm):
    print(f"  {a['source']:<22} x86 {a['plane']:<14} arm64 {b['plane']:<14} "
          f"{a['plane_confidence']} / {b['plane_confidence']}")
ok = len(x86) == len(arm) == 13 and all(same)
print(f"arm64 ({cpu}, emulated): {sum(same)}/{len(x86)} frames give the same plane as x86 "
      f"(arm64 scored {len(arm)}); largest confidence difference {conf}, quality score "
      f"difference {qual}; rootfs {rootfs_s} s, wheels {wheels_s} s, score under qemu {score_s} s")
sys.exit(0 if ok else 1)
PYEOF
