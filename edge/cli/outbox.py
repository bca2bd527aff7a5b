"""``sonoedge outbox`` (what waits to be sent) and ``sonoedge status`` (is the uplink well).

Both read the outbox database (WAL lets them read while ``sonoedge run`` writes): what
waits is counted there. ``status`` reads the uplink's state from the status file the uplink
rewrites on its changes, at most once a second. ``sonoedge outbox --retry-rejected`` is the
one write: it puts the messages the broker refused back in the queue, once the cause is
fixed. ``status`` asks the kernel whether a run holds the state dir (its lock), so the last
state of a process that was killed is shown as such, never as "connected".
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from edge.store.outbox import OUTBOX_FILE, counts_of
from edge.store.state import lock_holder
from edge.uplink.mqtt import STATUS_FILE, load_status
from wire.cli import OneLineParser
from wire.schema import number_or_none, sqlite_uri
from wire.shown import one_line, printable, shown_path

DEFAULT_STATE_DIR = os.environ.get("SONOEDGE_STATE_DIR", "state")


def _open_ro(state_dir: Path) -> sqlite3.Connection | None:
    path = state_dir / OUTBOX_FILE
    if not path.exists():
        return None
    conn = sqlite3.connect(sqlite_uri(path), uri=True, timeout=10)
    return conn


def _age(ts: object) -> str:
    """How long ago a wall-clock time was; "-" for none, or for anything not a number (a
    damaged file or row: a text or a list here raised a TypeError)."""
    ts = number_or_none(ts)
    if not ts:
        return "-"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def _ago(ts: object) -> str:
    """'12s ago', or 'never' (never '- ago')."""
    return "never" if _age(ts) == "-" else f"{_age(ts)} ago"


def _text(value: object, limit: int = 200) -> str:
    """A text from the status file as one printable line (no control character reaches
    the terminal), cut to `limit`."""
    text = printable(str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def _parser(prog: str) -> argparse.ArgumentParser:
    ap = OneLineParser(prog=prog)
    ap.add_argument("--config", type=Path,
                    help="the device's config, as given to `sonoedge run`: its [device] "
                         "state_dir is read")
    ap.add_argument("--state-dir", type=Path,
                    help=f"device state directory (default: the config's, else "
                         f"{DEFAULT_STATE_DIR}, or $SONOEDGE_STATE_DIR)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    return ap


def _state_dir(args: argparse.Namespace, prog: str) -> Path | None:
    """--state-dir, else the config's [device] state_dir, else the default; None when the
    config cannot be read or the folder is not there (said in one line). A folder that is
    not there was said as "the uplink has not run there yet": an installer who typed
    `sonoedge status` without the box's config read that of the default, ./state."""
    if args.config is None:
        path = args.state_dir or Path(DEFAULT_STATE_DIR)
    else:
        from edge.config import ConfigError, load_settings

        try:  # as `sonoedge pin` reads them: the flag over the config's key
            given = None if args.state_dir is None else str(args.state_dir)
            path = Path(load_settings(args.config, {"device": {"state_dir": given}})
                        .device.state_dir)
        except ConfigError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return None
    if not path.is_dir():
        where = ("--state-dir" if args.state_dir is not None else
                 f"{shown_path(args.config)}: [device] state_dir" if args.config is not None
                 else "the default state dir; the box's is in its config: give --config "
                      "FILE or --state-dir DIR")
        what = "not a folder" if path.exists() else "no such folder"
        print(f"{prog}: {shown_path(path)}: {what} ({where})", file=sys.stderr)
        return None
    return path


def _live_counts(state_dir: Path) -> tuple[dict | None, str | None]:
    """The outbox's counts from its database (None, and why, when it cannot be read)."""
    try:
        conn = _open_ro(state_dir)
        if conn is None:
            return None, None
        try:
            with conn:
                return counts_of(conn), None
        finally:
            conn.close()
    except sqlite3.Error as exc:  # not a database, damaged, a folder in its place
        return None, f"{shown_path(state_dir / OUTBOX_FILE)}: {printable(one_line(exc))}"


def outbox_main(argv: list[str]) -> int:
    ap = _parser("sonoedge outbox")
    ap.add_argument("--limit", type=int, default=50, help="rows to list (default 50)")
    ap.add_argument("--retry-rejected", action="store_true",
                    help="queue the messages the broker refused again (after fixing the "
                         "device id, its credentials or the ACL)")
    args = ap.parse_args(argv)
    state_dir = _state_dir(args, "sonoedge outbox")
    if state_dir is None:
        return 2
    if args.retry_rejected:
        return _retry_rejected(state_dir)
    try:
        conn = _open_ro(state_dir)
        if conn is None:
            print(f"sonoedge outbox: no outbox in {shown_path(state_dir)} (nothing recorded "
                  "yet)")
            return 0
        with conn:
            rows = conn.execute(
                "SELECT seq, kind, msg_id, size, created_ts, attempts, state, reason "
                "FROM outbox ORDER BY id LIMIT ?", (args.limit,)).fetchall()
            counts = counts_of(conn)
        conn.close()
    except sqlite3.Error as exc:
        print(f"sonoedge outbox: {shown_path(state_dir / OUTBOX_FILE)}: "
              f"{printable(one_line(exc))}", file=sys.stderr)
        return 2
    summary = {
        "pending": counts["pending"],
        # sent: the broker took them, kept until the district's receipt (wire/receipt.py)
        "awaiting_receipt": counts["awaiting_receipt"],
        # exams and corrections gone without their receipt (deleted on PUBACK before
        # receipts began, or dropped by the quota): never confirmed by the district
        "unconfirmed": counts["unconfirmed"],
        "rejected": counts["rejected"],
        "bytes": counts["payload_bytes"],
        "quota_used_bytes": counts["used_bytes"],
        "by_kind": counts["by_kind"],
        "last_seq": counts["last_seq"],
        "dropped": {"health": counts["dropped_health"], "exam": counts["dropped_exam"]},
    }
    if args.json:
        items = [dict(zip(("seq", "kind", "msg_id", "size", "created_ts", "attempts", "state",
                           "reason"), r, strict=True)) for r in rows]
        print(json.dumps({**summary, "messages": items}, indent=1))
        return 0
    print(f"{summary['pending']} pending, {summary['rejected']} rejected, "
          f"{summary['awaiting_receipt']} sent awaiting the district's receipt, "
          f"{summary['unconfirmed']} gone without one, "
          f"{summary['bytes']} bytes of payload (quota used {summary['quota_used_bytes']}); "
          f"last seq {summary['last_seq']}; dropped by quota: "
          f"{summary['dropped']['health']} health, {summary['dropped']['exam']} exam")
    if rows:
        print(f"{'seq':>7} {'kind':<7} {'msg_id':<36} {'bytes':>6} {'age':>6} {'tries':>5} state")
    for seq, kind, msg_id, size, created, attempts, state, reason in rows:
        # a row's texts as stored: a broker's reason or a damaged row, never a second line
        kind, msg_id, state = (printable(str(v)) for v in (kind, msg_id, state))
        extra = f" ({printable(str(reason))})" if reason else ""
        print(f"{seq!s:>7} {kind:<7} {msg_id:<36} {size!s:>6} {_age(created):>6} "
              f"{attempts!s:>5} {state}{extra}")
    total = summary["pending"] + summary["awaiting_receipt"] + summary["rejected"]
    if total > len(rows):
        print(f"... {total - len(rows)} more")
    return 0


def _retry_rejected(state_dir: Path) -> int:
    path = state_dir / OUTBOX_FILE
    if not path.is_file():
        print(f"sonoedge outbox: no outbox in {shown_path(state_dir)} (nothing recorded yet)")
        return 0
    try:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            count = conn.execute("UPDATE outbox SET state = 'pending', reason = NULL "
                                 "WHERE state = 'rejected'").rowcount
        finally:
            conn.close()
    except sqlite3.Error as exc:
        print(f"sonoedge outbox: {shown_path(path)}: {printable(one_line(exc))}",
              file=sys.stderr)
        return 2
    live = lock_holder(state_dir)
    when = ("the running sonoedge (pid {}) sends them now".format(live.get("pid", "?"))
            if live is not None else "the next `sonoedge run` sends them")
    print(f"{count} rejected message(s) queued again; {when}")
    return 0


def status_main(argv: list[str]) -> int:
    """What the uplink's status file says (read as hostile input, `load_status`), with
    the outbox's counts from its database (`counts_of`): what can be read is shown, and
    what is damaged is said in one line on stderr, never a traceback; the running uplink
    rewrites the file at its next change. With no status file (the uplink never wrote one,
    or it is gone) the outbox's own counts are still shown: exams the broker refused wait
    there, with their fix, whether or not the uplink ever said so."""
    args = _parser("sonoedge status").parse_args(argv)
    state_dir = _state_dir(args, "sonoedge status")
    if state_dir is None:
        return 2
    status, problem = load_status(state_dir)
    holder = lock_holder(state_dir)
    if problem:
        print(f"sonoedge status: {problem}", file=sys.stderr)
    live, unread = _live_counts(state_dir)
    if unread:
        instead = ("the outbox counts are the status file's" if status is not None
                   else "its messages cannot be counted")
        print(f"sonoedge status: {unread}; {instead}", file=sys.stderr)
    if status is not None and live is not None:  # the database's, not the file's snapshot
        status["outbox"] = {**(status.get("outbox") or {}), **live}
    if status is not None:
        status["running"] = holder is not None
        if holder is None:
            status["connected"] = False  # whatever the file says: nobody holds a link
    shapes, shape_lines = _screen_shapes(args, state_dir)
    if args.json:  # no status file: the outbox's counts alone, beside "uplink": null
        alone = {"outbox": live} if status is None and live is not None else {}
        print(json.dumps({"uplink": status, **alone,
                          **({"damaged": problem} if problem else {}),
                          "screen_shape": shapes}, indent=1))
        return 0
    _print_uplink(status, problem, holder, live, state_dir)
    for line in shape_lines:  # after the uplink's lines, whichever were shown
        print(line)
    return 0


def _print_uplink(status: dict | None, problem: str | None, holder: object,
                  live: dict | None, state_dir: Path) -> None:
    """The uplink's lines, and the outbox's: from its status file, else what is known."""
    running = ("a run holds this state dir" if holder is not None
               else "no run holds this state dir")
    if status is None:  # whatever the uplink never wrote, the outbox may still hold refusals
        if problem:
            print(f"mqtt: unknown (its status file is damaged); {running}")
        else:
            print(f"sonoedge status: no {STATUS_FILE} in {shown_path(state_dir)}: the uplink "
                  "has not run there yet")
        if live is not None:
            _print_outbox(live)
        return
    box = status.get("outbox") or {}
    pid = status.get("pid", "?")
    broker = _text(status.get("broker", "?"))
    if holder is None:
        state = (f"not running: the run that wrote this (pid {pid}) has ended; "
                 f"its last state is {_age(status.get('updated_ts'))} old"
                 + ("" if status.get("enabled") else "; it had no broker (no --mqtt-url)"))
    elif not status.get("enabled"):
        state = "disabled (no --mqtt-url): recording to the outbox only"
    elif status.get("connected"):
        state = f"connected to {broker}"
    else:
        state = f"NOT connected to {broker}"
    print(f"device {_text(status.get('device_id', '?'), 64)}  "
          f"clinic {_text(status.get('clinic_id') or '-', 64)}")
    print(f"mqtt: {state}")
    if status.get("last_error"):
        print(f"last error ({_age(status.get('last_error_ts'))} ago): "
              f"{_text(status['last_error'], 500)}")
    print(f"last connect: {_ago(status.get('last_connect_ts'))}; "
          f"last ack: {_ago(status.get('last_ack_ts'))}; "
          f"acked {status.get('acked', 0)}, refused {status.get('refused', 0)} "
          f"({'this' if holder is not None else 'that'} run, pid {pid})")
    held = status.get("held", 0)
    if held:
        print(f"disk full: {held} exam summar{'y' if held == 1 else 'ies'} held in memory "
              "until there is room")
    _print_outbox(box)
    print(f"status written {_age(status.get('updated_ts'))} ago")


def _screen_shapes(args: argparse.Namespace, state_dir: Path) -> tuple[dict | None, list[str]]:
    """The screen-shape verdict of each screen the box remembers (`screen_shape.json`), as
    the box gives it from that remembered reading: the scorer's own rule (`StretchWatch`,
    `edge.models.fan.limits`) and wording (`refusal`), with the box's settings from
    --config, else the defaults (said which). An installer who checks `status` rather than
    `run`'s log learns that heads are not measured, and the setting that undoes it; and, as
    `run` warns, where the box's `[source] stretch` is an SD size's and the screen's frames
    are not of that size, what that costs (`another_size`): the fan cannot tell.

    A verdict read under another `[source] stretch` than the one set now is of the picture
    before it (its frames were narrowed by the setting then): it is said so, with what the
    same grabber frames read under the setting now (`under_setting`), judged by the same
    rule, and that the box reads the screen afresh (it comes back at that size, under
    another key). One kept before the box recorded its setting is judged as read under
    the setting now, as the scorer starts from it (`Scorer._recalled`), and said so (not
    warned of as another size's where its frames are that SD size: remembered before the
    setting was made). No file: nothing (None, no line); a damaged one: one line on stderr
    naming it."""
    from edge.config import ConfigError, Settings, fan_settings, load_settings
    from edge.models.fan import (
        FanSettings,
        StretchWatch,
        another_size,
        parse_screen_key,
        refusal,
        same_frames,
        setting_for_another_size,
        setting_words,
        under_setting,
    )
    from edge.store import screen_shape

    screens, damaged = screen_shape.recalled(state_dir)
    if damaged:
        print(f"sonoedge status: screen shape: {damaged}; no verdict shown", file=sys.stderr)
        return {"screens": [], "damaged": damaged}, []
    if not screens:
        return None, []
    try:  # read already for the state dir: a failure here is a file changed since
        box = Settings() if args.config is None else load_settings(args.config)
    except ConfigError as exc:
        print(f"sonoedge status: screen shape: {exc}", file=sys.stderr)
        return None, []
    fan = fan_settings(box)
    now = box.source.stretch
    geometry = fan if fan is not None else FanSettings(undone=now)  # where the check is off
    judged = ("the defaults: give --config for the box's own" if args.config is None
              else f"the settings of {shown_path(args.config)}")
    if fan is None:
        judged = (f"not checked: [biometry] stretch_tolerance = 0 in "
                  f"{shown_path(args.config)}")
    shown_list, lines = [], []
    for key, stretch, at, read_under in reversed(screens):  # the newest first
        source, shape = parse_screen_key(key)  # not a key the box writes: no size
        entry = {"source": printable(source), "width": None if shape is None else shape[1],
                 "height": None if shape is None else shape[0], "stretch": stretch,
                 "at": number_or_none(at), "read_under": read_under, "as_now": None}
        moved = read_under is not None and not same_frames(geometry, shape, read_under)
        reading, frames, before = stretch, shape, ""
        if read_under is None:
            before = (f" under {setting_words(None)} (kept before the box recorded it), "
                      f"judged as under {setting_words(now)}")
        if moved:
            before = (f" under {setting_words(read_under)}, but {setting_words(now)} is set "
                      "now: a verdict of the picture before it")
            if shape is not None:
                reading, frames = under_setting(geometry, stretch, shape, read_under)
                entry["as_now"] = {"width": frames[1], "height": frames[0],
                                   "stretch": reading}
                before += (f"; under it the frames become {frames[1]}x{frames[0]} and "
                           f"should read {reading:.3f}")
        costs = meant = None
        if fan is None or (moved and shape is None):
            verdict = "not judged" + ("" if fan is None else ": the box reads it afresh")
            entry.update(stretched=None, setting=None)
        else:
            watch = StretchWatch(fan, reading, frames)
            verdict = refusal(watch) if watch.stretched else "keeps its shape"
            entry.update(stretched=watch.stretched,
                         setting=watch.setting if watch.stretched else None)
            # `[source] stretch` made for an SD size these frames are not: as `run` warns.
            # One of that very size kept before the box recorded its setting was read
            # before the setting was made (after it, its frames are widened).
            meant = setting_for_another_size(fan, frames)
            if meant is not None and (read_under is not None
                                      or (frames[1], frames[0]) != meant):
                costs = another_size(fan, frames)
            else:
                meant = None
        entry["verdict"] = verdict
        entry["setting_meant_for"] = (None if meant is None
                                      else {"width": meant[0], "height": meant[1]})
        entry["warning"] = costs
        shown_list.append(entry)
        where = "?" if shape is None else f"{shape[1]}x{shape[0]}"
        after = "" if costs is None else f"; {costs}"
        if moved and fan is not None and shape is not None:
            after += "; the box reads it afresh (not yet read under it)"
        lines.append(f"  {_text(source, 120)} {where}: remembered {stretch:.3f}"
                     f" ({_ago(at)}){before}: {verdict}{after}")
    lines.insert(0, f"screen shape: {len(screens)} screen(s) remembered, the newest first, "
                    + (f"judged with {judged}" if fan is not None else judged))
    return {"settings": "defaults" if args.config is None else shown_path(args.config),
            "checked": fan is not None, "setting_now": now, "screens": shown_list}, lines


def _print_outbox(box: dict) -> None:
    """The outbox's line, and the broker's refusals with their fix: from the database
    (`counts_of`), else the status file's last snapshot. The quota is the running uplink's
    setting, known from the status file only: without one, the bytes used alone."""
    quota = box.get("quota_bytes")
    used = f"{box.get('used_bytes', '?')}" + ("" if quota is None else f"/{quota}")
    print(f"outbox: {box.get('pending', '?')} pending ({box.get('pending_exam', '?')} exam), "
          f"{box.get('rejected', 0)} rejected, {box.get('awaiting_receipt', 0)} sent awaiting "
          f"the district's receipt, {box.get('unconfirmed', 0)} gone without one, "
          f"quota used {used} bytes; dropped {box.get('dropped_health', 0)} "
          f"health, {box.get('dropped_exam', 0)} exam")
    if box.get("rejected"):  # never sent again by themselves: said with the fix
        exams = box.get("rejected_exams")
        among = "" if exams is None else f", {exams} of them exams or corrections"
        print(f"refused by the broker: {box['rejected']} message(s){among}; none reaches the "
              "district: mend the box's MQTT credentials, its device id or the broker's ACL, "
              "then run `sonoedge outbox --retry-rejected`")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "outbox":
        sys.exit(outbox_main(sys.argv[2:]))
    if cmd == "status":
        sys.exit(status_main(sys.argv[2:]))
    print("usage: python -m edge.cli.outbox outbox|status [--state-dir DIR] [--json]",
          file=sys.stderr)
    sys.exit(2)
