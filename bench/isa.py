"""The bench's second kind of CPU: this one with AVX-512 and VNNI hidden (bench/isa_mask.c).

Issue 13 asks the int8 models' speed to hold "on both kinds of CPU": with VNNI, and an
AVX2-only AMD EPYC. `hidden_isa_env()` gives the environment under which a bench worker
sees only AVX2 (CPUID faulting), so one `make bench` times both instruction paths of the
same code in one run. What it cannot give is that CPU's clock, caches or memory: figures
under it are this core with AVX2's kernels, and only ratios within it travel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from quantize.manifest import read_cpuinfo

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "bench" / "isa_mask.c"
AVX512F, AVX512_VNNI, AVX_VNNI, AVX2, MASK_ON = 1, 2, 4, 8, 256


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags of /proc/cpuinfo's text (quantize.manifest.read_cpuinfo)."""
    return read_cpuinfo(cpuinfo.splitlines())[1]


def _read_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            return read_cpuinfo(info)[1]
    except OSError:
        return set()


def build_mask(out_dir: Path) -> Path:
    """Compile isa_mask.c into `out_dir` (again only when the source is newer)."""
    out = out_dir.resolve() / "isa_mask.so"
    if out.is_file() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) to build bench/isa_mask.c")
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(SOURCE)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"bench/isa_mask.c did not compile: {tail}")
    return out


def seen_under(env: dict[str, str], library: Path) -> int:
    """The bits isa_mask_seen() reports in a fresh Python under `env`."""
    probe = ("import ctypes, sys; "
             f"print(ctypes.CDLL({str(library)!r}).isa_mask_seen())")
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"the CPUID mask's probe failed (exit {proc.returncode})")
    return int(proc.stdout.strip())


def hidden_isa_env(out_dir: Path) -> tuple[dict[str, str] | None, str]:
    """(environment, why): an environment whose Python sees AVX2 but no AVX-512 or VNNI,
    or None and the one-line reason this box cannot give it."""
    flags = _read_flags()
    if "avx2" not in flags:
        return None, "this CPU has no AVX2"
    if not flags & {"avx512_vnni", "avx_vnni", "avx512f"}:
        return None, "this CPU is already AVX2 without AVX-512 or VNNI: the rows above are it"
    if "cpuid_fault" not in flags:
        return None, "this CPU (or its hypervisor) offers no CPUID faulting to hide them"
    try:
        library = build_mask(out_dir)
        env = dict(os.environ, LD_PRELOAD=str(library))
        # faulthandler (or the dev mode, which enables it) would take SIGSEGV from the
        # mask and turn the first CPUID into a crash
        env.pop("PYTHONFAULTHANDLER", None)
        env.pop("PYTHONDEVMODE", None)
        seen = seen_under(env, library)
    except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return None, str(exc)
    if seen != MASK_ON | AVX2:
        return None, f"the CPUID mask did not take (isa_mask_seen() = {seen:#x})"
    return env, "AVX2 only: AVX-512 and VNNI hidden by CPUID faulting (bench/isa_mask.c)"
