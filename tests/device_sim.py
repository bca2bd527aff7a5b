"""A stand-in device for the MQTT scenarios: drives Outbox + Uplink exactly as the loop does.

    python -m tests.device_sim --state-dir D --mqtt-url URL --device-id dev-a --frames 200

It "scores" ``--frames`` synthetic frames, enqueues an exam summary every ``--exam-every``
frames (and, with ``--dates-every N``, a ``dates`` correction after every Nth exam) and a
health message every ``--health-every`` frames, then drains the outbox until
``--drain-timeout`` and exits 0 whether or not the outbox is empty (like ``run --once``);
with ``--wait-receipts S`` it then waits up to S seconds until a receipt has come from the
district and no exam waits for one.
Each enqueued message is appended to ``--produced`` as "seq msg_id kind" after it is stored.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from edge.exam import tally
from edge.uplink.mqtt import MqttSettings, Uplink

PLANES = ["4CH", "3VV", "Brain (Tv.)", "Femur", "Abdominal", "Background", "Lips"]


def frame_result(i: int) -> dict:
    failed = i % 97 == 13
    return {
        "schema": 1, "source": "mother_name_clip.mp4", "frame": i,
        "plane": None if failed else PLANES[i % len(PLANES)],
        "plane_confidence": None if failed else 0.5 + (i % 50) / 100,
        "latency_ms": 5.0 + (i % 7), "capture_ms": 0.4, "preprocess_ms": 1.2, "infer_ms": 4.5,
        "roi": [10, 20, 300, 200], "model": "plane_student@1.0.0", "ts": time.time(),
        "mono_s": time.monotonic(), "error": "decode failed" if failed else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-dir", required=True, type=Path)
    ap.add_argument("--mqtt-url", default="")
    ap.add_argument("--device-id", default="dev-a")
    ap.add_argument("--clinic-id", default="clinic-1")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--exam-every", type=int, default=50)
    ap.add_argument("--health-every", type=int, default=20)
    ap.add_argument("--dates-every", type=int, default=0,
                    help="an age-by-dates correction after every Nth exam (0: none)")
    ap.add_argument("--frame-delay-s", type=float, default=0.0)
    ap.add_argument("--drain-timeout", type=float, default=20.0)
    ap.add_argument("--quota-bytes", type=int, default=64 * 1024 * 1024)
    ap.add_argument("--max-inflight", type=int, default=20)
    ap.add_argument("--reconnect-max-s", type=float, default=0.5)
    ap.add_argument("--produced", type=Path)
    ap.add_argument("--tls-ca", default="")
    ap.add_argument("--tls-cert", default="")
    ap.add_argument("--tls-key", default="")
    ap.add_argument("--final-health", action="store_true",
                    help="after draining, send one more health (it reports the drops)")
    ap.add_argument("--resend-after-s", type=float, default=None,
                    help="[mqtt] resend_after_s (default: the uplink's)")
    ap.add_argument("--wait-receipts", type=float, default=0.0,
                    help="after draining, wait this long at most until a receipt has come "
                         "and nothing sent waits for one")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = MqttSettings(
        url=args.mqtt_url, device_id=args.device_id, clinic_id=args.clinic_id,
        outbox_quota_bytes=args.quota_bytes, max_inflight=args.max_inflight,
        reconnect_min_s=0.1, reconnect_max_s=args.reconnect_max_s, connect_timeout_s=3,
        tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
        **({} if args.resend_after_s is None else {"resend_after_s": args.resend_after_s}),
    )
    uplink = Uplink(settings, args.state_dir, {"plane_student": "1.0.0"})
    uplink.start()
    produced = open(args.produced, "a", encoding="utf-8") if args.produced else None

    def note(kind: str, msg_id: str | None) -> None:
        if produced is not None and msg_id is not None:
            produced.write(f"{msg_id} {kind}\n")
            produced.flush()

    results: list[dict] = []
    exams = 0
    started, started_mono = time.time(), time.monotonic()
    for i in range(args.frames):
        results.append(frame_result(i))
        if args.frame_delay_s:
            time.sleep(args.frame_delay_s)
        if (i + 1) % args.health_every == 0:
            note("health", uplink.enqueue_health({"fps": 30.0, "frames": i + 1}))
        if (i + 1) % args.exam_every == 0 or i + 1 == args.frames:
            summary = tally.summarize_exam(
                results, "mother_name_clip.mp4", started, time.time(),
                started_mono=started_mono, ended_mono=time.monotonic(),
                model_versions=uplink.model_versions)
            note("exam", uplink.enqueue_exam(summary))
            exams += 1
            if args.dates_every and exams % args.dates_every == 0:
                # the midwife entered this exam's dates on its report after it ended
                note("dates", uplink.enqueue_dates(summary["exam_id"], 20.0 + exams % 20,
                                                   1, time.time()))
            results, started, started_mono = [], time.time(), time.monotonic()
    drained = uplink.drain(args.drain_timeout)
    if args.final_health:
        note("health", uplink.enqueue_health({"fps": 30.0, "frames": args.frames}))
        drained = uplink.drain(args.drain_timeout)
    deadline = time.monotonic() + args.wait_receipts
    while drained and time.monotonic() < deadline and (
            uplink.outbox.pending_count() or uplink.outbox.awaiting_receipt_count()
            or not uplink.outbox.receipts_seen()):
        time.sleep(0.05)  # sent again after resend_after_s while it waits: pending again
    counts = uplink.outbox.counts()
    uplink.close()
    print(json.dumps({"drained": drained, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
