"""`make bench`: what the midwife's page costs, measured in the browser and in the device.

Three runs of `sonoedge run --web` on the same paced clip of real frames (15 fps), at the
default 10 fps stream cap: nobody watching; one viewer that only receives the stream (a
WebSocket client, as a phone would be: its decoding and drawing happen on the phone, not
on the box), for the CPU, the bandwidth and the per-frame path; and one headless Chromium
viewer, for the frame-to-overlay latency measured in the browser on loopback (median,
p90, and where it goes). The page is served as a box serves it, over TLS (https, wss) with
the certificate the device made. CPU is the server's own thread clocks (event loop, JPEG encoder,
status reader) as a share of one core, plus the loop thread's time in the web hook.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from edge.exam.tally import percentile
from tests.conftest import DATA
from tests.web_harness import PIN, chromium, client_ssl, device, http, login_cookie, make_clip

SUMMARY_RE = re.compile(r"latency median ([\d.]+) ms, p90 ([\d.]+) ms")
WINDOW_S = 20.0


def _loop_latency(log: Path) -> tuple[float, float] | None:
    found = SUMMARY_RE.findall(log.read_text(errors="replace"))
    return (float(found[-1][0]), float(found[-1][1])) if found else None


def _metrics(base: str, cookie: str) -> dict:
    return json.loads(http(base + "/api/metrics", cookie=cookie)[2])


class _Receiver:
    """A viewer that takes the stream and throws it away: bytes and frames counted."""

    def __init__(self, base: str, cookie: str):
        import threading

        self.base, self.cookie = base, cookie
        self.bytes = self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        import asyncio

        import aiohttp

        async def go() -> None:
            name, value = self.cookie.split("=", 1)
            async with aiohttp.ClientSession(cookies={name: value}) as session, \
                    session.ws_connect(self.base.replace("http", "ws", 1) + "/api/ws",
                                       max_msg_size=8 << 20,
                                       ssl=client_ssl(self.base) or True) as ws:
                await ws.send_json({"heatmap": False, "video": True})
                while not self._stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.5)
                    except TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        self.bytes += len(msg.data)
                        self.frames += 1
                    elif msg.type != aiohttp.WSMsgType.TEXT:
                        return

        asyncio.run(go())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _run(tmp: Path, clip: Path, viewer: str | None) -> dict:
    name = viewer or "unwatched"
    out: dict = {}
    with device(tmp, clip, log_name=f"{name}.log") as (base, proc):
        cookie = login_cookie(base)
        # wait until the loop runs (models loaded)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = json.loads(http(base + "/api/state", cookie=cookie)[2])
            if state["status"]["phase"] == "running" and state["frame"]:
                break
            time.sleep(0.2)
        if viewer == "stream":
            receiver = _Receiver(base, cookie)
            time.sleep(2.0)
            m0, t0, b0, f0 = _metrics(base, cookie), time.monotonic(), receiver.bytes, \
                receiver.frames
            time.sleep(WINDOW_S)
            m1, t1 = _metrics(base, cookie), time.monotonic()
            out["bytes"], out["frames"] = receiver.bytes - b0, receiver.frames - f0
            receiver.close()
        elif viewer == "browser":
            with chromium(tmp) as context:
                page = context.new_page()
                page.goto(base + "/")
                page.fill("#pin", PIN)
                page.click("#unlock")
                page.wait_for_function("window.sonoedge.frames > 5", timeout=60_000,
                                       polling=200)
                m0, t0 = _metrics(base, cookie), time.monotonic()
                b0 = page.evaluate("window.sonoedge.bytes")
                f0 = page.evaluate("window.sonoedge.frames")
                page.evaluate("window.sonoedge.latencies.length = 0; "
                              "window.sonoedge.parts.length = 0")
                time.sleep(WINDOW_S)
                m1, t1 = _metrics(base, cookie), time.monotonic()
                out["bytes"] = page.evaluate("window.sonoedge.bytes") - b0
                out["frames"] = page.evaluate("window.sonoedge.frames") - f0
                out["latencies"] = page.evaluate("window.sonoedge.latencies")
                out["parts"] = page.evaluate("window.sonoedge.parts")
        else:
            m0, t0 = _metrics(base, cookie), time.monotonic()
            time.sleep(WINDOW_S)
            m1, t1 = _metrics(base, cookie), time.monotonic()
        out["wall_s"] = t1 - t0
        out["cpu_s"] = {k: m1["cpu_s"][k] - m0["cpu_s"][k] for k in m1["cpu_s"]}
        out["hook_s"] = m1["hook_s"] - m0["hook_s"]
        out["loop_frames"] = m1["loop_frames"] - m0["loop_frames"]
        out["encoded"] = m1["frames_encoded"] - m0["frames_encoded"]
        out["encode_ms_mean"] = m1["encode_ms_mean"]
        out["sent_bytes"] = m1["bytes_sent"] - m0["bytes_sent"]
    out["loop_latency"] = _loop_latency(tmp / f"{name}.log")
    return out


def web_section() -> None:
    print("\n## The midwife's page (sonoedge run --web; a paced 15 fps clip of real frames, "
          f"{WINDOW_S:.0f} s windows, stream cap 10 fps, loopback)\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="sonoedge-bench-web-") as name:
        tmp = Path(name)
        clip = make_clip(DATA, tmp / "clip.avi", black_s=2.0, per_head=12, rounds=4)
        runs = {}
        for viewer in (None, "stream", "browser"):
            (tmp / str(viewer)).mkdir()
            runs[viewer] = _run(tmp / str(viewer), clip, viewer)
    idle, seen, browser = runs[None], runs["stream"], runs["browser"]
    lat = browser.get("latencies") or []
    if lat:
        parts = list(zip(*browser["parts"], strict=True))
        med = [statistics.median(p) for p in parts]
        print(f"frame-to-overlay latency in the browser: median {statistics.median(lat):.0f} ms, "
              f"p90 {percentile(lat, 0.9):.0f} ms over {len(lat)} frames (target <= 150 ms); "
              f"median parts: capture->scored {med[0]:.0f} ms, scored->sent (cap + JPEG) "
              f"{med[1]:.0f} ms, sent->drawn {med[2]:.0f} ms")
    wall = seen["wall_s"]
    fps = seen["frames"] / wall
    kbs = seen["bytes"] / wall / 1000
    print(f"bandwidth per viewer: {kbs:.0f} kB/s ({kbs * 8 / 1000:.2f} Mbit/s) at {fps:.1f} "
          f"frames/s, {seen['bytes'] / max(1, seen['frames']) / 1000:.1f} kB per frame; "
          f"JPEG encode {seen['encode_ms_mean']:.1f} ms per frame")
    cpu = seen["cpu_s"]
    server = cpu["server"] + cpu["encode"] + cpu["status"]
    share = 100 * (server + seen["hook_s"]) / wall
    print(f"CPU of the server and the stream, one viewer: {100 * server / wall:.1f}% of one core "
          f"(event loop {100 * cpu['server'] / wall:.1f}%, JPEG {100 * cpu['encode'] / wall:.1f}%,"
          f" status {100 * cpu['status'] / wall:.2f}%) + the loop's web hook "
          f"{100 * seen['hook_s'] / wall:.2f}% (GIL waits included) = {share:.1f}% (target <= 10%)")
    idle_cpu = idle["cpu_s"]
    print(f"nobody watching: {100 * sum(idle_cpu.values()) / idle['wall_s']:.2f}% of one core, "
          f"{idle['encoded']} frames encoded, hook "
          f"{1000 * idle['hook_s'] / max(1, idle['loop_frames']):.3f} ms per frame")
    for label, run in (("page closed", idle), ("one viewer", seen),
                       ("Chromium on the same cores", browser)):
        if run.get("loop_latency"):
            p50, p90 = run["loop_latency"]
            print(f"per-frame path, {label}: median {p50:.1f} ms, p90 {p90:.1f} ms "
                  f"({run['loop_frames'] / run['wall_s']:.1f} fps scored; web hook "
                  f"{1000 * run['hook_s'] / max(1, run['loop_frames']):.3f} ms per frame)")


if __name__ == "__main__":
    import argparse

    # --help says what it measures, rather than starting three runs and a browser
    argparse.ArgumentParser(prog="python -m bench.web",
                            description=__doc__.split("\n")[0]).parse_args()
    web_section()
