"""The district's side of model bundles: publish one to a device group, serve it over HTTP(S),
and report what each device runs.

    sonoedge-central bundle publish FILE --group G --mqtt-url mqtt://publisher@host:port \
        --password-file F [--keys DIR] [--chunk-kb 32]
    sonoedge-central bundle export FILE --group G --out /var/www/sonoedge/bundles [--keys DIR]

Over MQTT the bundle goes out retained, in chunks, then the offer (wire/fleet.py), so a device
that is offline today gets it when it next connects, asking only for the chunks it lacks.
The chunks of the offer it replaces are cleared afterwards. `export` writes the same offer
and the bundle as static files for any web server (HTTPS with the district's certificate);
devices resume a cut download with a Range request. The publisher checks what it sends:
the bundle's group must be the one named, and with `--keys` its signature too, so a typo
never reaches the clinics. Give the publisher its own broker user (`board/provision.py
--central publisher-1`): with `use_username_as_clientid` a second client of the collector's
user would knock the collector off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import sys
import tarfile
import time
from pathlib import Path

from wire.cli import OneLineParser
from wire.fleet import (
    MANIFEST_MEMBER,
    MAX_CHUNKS,
    MAX_MANIFEST_BYTES,
    SIGNATURE_BYTES,
    SIGNATURE_MEMBER,
    BundleError,
    BundleManifest,
    Offer,
    check_group,
    chunk_topic,
    load_trusted_keys,
    offer_topic,
    parse_manifest,
    parse_offer,
    verify_signature,
)
from wire.mqtt import check_tls_file
from wire.shown import printable, read_failure, shown_path

log = logging.getLogger("sonoedge.central.fleet")


def load_keys(keys_dir: str) -> list:
    """Every `*.pub` in `keys_dir`, checked as the device checks its own (wire/fleet.py)."""
    return load_trusted_keys(keys_dir, "--keys")


def peek(path: Path, group: str, keys_dir: str = "",
         max_bytes: int = MAX_CHUNKS * 32768) -> BundleManifest:
    """The bundle's manifest (signature checked against `keys_dir` when given); its group
    must be `group`. A bundle is a regular file a device could fetch: at most `max_bytes`
    (MAX_CHUNKS chunks; it is read whole to be chunked), never a FIFO."""
    check_group(group)
    name = shown_path(path)  # one line, cut in the middle: a path may be 5,000 characters
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise BundleError(f"{name}: not a readable bundle ({read_failure(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{name}: not a readable bundle (not a regular file)")
    if st.st_size > max_bytes:
        raise BundleError(f"{name}: {st.st_size} bytes, over the {max_bytes} an offer can "
                          f"hold ({MAX_CHUNKS} chunks)")
    try:
        with tarfile.open(path, "r:xz") as tar:
            first, second = tar.next(), tar.next()
            if (first is None or first.name != MANIFEST_MEMBER or not first.isreg()
                    or first.size > MAX_MANIFEST_BYTES or second is None
                    or second.name != SIGNATURE_MEMBER or second.size != SIGNATURE_BYTES):
                raise BundleError(f"{name}: not a sonoedge bundle")
            data = tar.extractfile(first).read(MAX_MANIFEST_BYTES)
            signature = tar.extractfile(second).read(SIGNATURE_BYTES)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{name}: not a readable bundle ({read_failure(exc)})") from None
    if keys_dir:
        verify_signature(data, signature, load_keys(keys_dir))
    manifest = parse_manifest(data, 1 << 40)
    if manifest.group != group:
        raise BundleError(f"{name}: bundle {manifest.version} is for group "
                          f"{manifest.group!r}, not {group!r}")
    return manifest


def make_offer(path: Path, manifest: BundleManifest, chunk_size: int) -> tuple[Offer, bytes]:
    data = Path(path).read_bytes()
    hashes = tuple(hashlib.sha256(data[i:i + chunk_size]).hexdigest()
                   for i in range(0, len(data), chunk_size))
    offer = Offer(hashlib.sha256(data).hexdigest(), len(data), chunk_size, hashes,
                  manifest.version, manifest.group)
    return offer, data


def export(path: Path, group: str, out_dir: Path, keys_dir: str = "",
           chunk_size: int = 32768) -> Offer:
    """`<out>/<group>/<id>.bundle` and `offer.json` (written last, atomically)."""
    manifest = peek(Path(path), group, keys_dir, MAX_CHUNKS * chunk_size)
    offer, data = make_offer(Path(path), manifest, chunk_size)
    folder = Path(out_dir) / group
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in ((f"{offer.bundle_id}.bundle", data),
                       ("offer.json", json.dumps(offer.to_dict()).encode())):
        tmp = folder / (name + ".tmp")
        tmp.write_bytes(blob)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / name)
    return offer


def _client(url: str, password_file: str, tls_ca: str):
    import paho.mqtt.client as mqtt

    from wire.mqtt import parse_mqtt_url, read_secret_file

    target = parse_mqtt_url(url)
    if tls_ca:
        check_tls_file(tls_ca, "--tls-ca")
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"{target.username or 'sonoedge'}-publisher",
                         protocol=mqtt.MQTTv5)
    password = read_secret_file(password_file) if password_file else target.password
    if target.username:
        client.username_pw_set(target.username, password or None)
    if target.tls or tls_ca:
        client.tls_set(ca_certs=tls_ca or None)
    return client, target


def publish(path: Path, group: str, url: str, password_file: str = "", keys_dir: str = "",
            chunk_size: int = 32768, tls_ca: str = "", timeout_s: float = 600.0) -> Offer:
    """Publish the bundle retained in chunks, then its offer; clear the old offer's chunks."""

    manifest = peek(Path(path), group, keys_dir, MAX_CHUNKS * chunk_size)
    offer, data = make_offer(Path(path), manifest, chunk_size)
    client, target = _client(url, password_file, tls_ca)
    acked: set[int] = set()
    state: dict = {"connack": None, "old": None}

    def on_connect(_c, _u, _f, reason, _p):
        state["connack"] = reason

    def on_publish(_c, _u, mid, reason, _p):
        if reason.is_failure:
            state["refused"] = str(reason)
        acked.add(mid)

    def on_message(_c, _u, msg):
        if msg.topic == offer_topic(group) and msg.payload:
            try:
                state["old"] = parse_offer(bytes(msg.payload), 1 << 40, 1 << 30)
            except BundleError:
                pass

    client.on_connect, client.on_publish, client.on_message = on_connect, on_publish, on_message
    try:
        client.connect(target.host, target.port, keepalive=30)
    except OSError as exc:  # was "[Errno 111] Connection refused", naming no broker
        raise BundleError(f"broker {target.host}:{target.port}: cannot connect "
                          f"({exc.strerror or exc})") from None
    client.loop_start()
    deadline = time.monotonic() + timeout_s
    try:
        _wait(lambda: state["connack"] is not None, deadline, "no CONNACK")
        if state["connack"].is_failure:
            raise BundleError(f"broker refused the login: {state['connack']}")
        client.subscribe(offer_topic(group), qos=1)  # the offer being replaced, if any
        time.sleep(1.0)
        client.unsubscribe(offer_topic(group))
        mids = []
        for i in range(offer.count):
            start, end = offer.chunk_range(i)
            info = client.publish(chunk_topic(group, offer.bundle_id, i), data[start:end],
                                  qos=1, retain=True)
            mids.append(info.mid)
            while len(set(mids) - acked) >= 20:  # a bounded window in flight
                _wait(lambda: len(set(mids) - acked) < 20, deadline, "chunk PUBACKs")
        _wait(lambda: set(mids) <= acked, deadline, "chunk PUBACKs")
        if state.get("refused"):
            raise BundleError(f"broker refused a chunk ({state['refused']}): may this user "
                              f"publish under sonoedge-fleet/? (board/provision.py --central)")
        info = client.publish(offer_topic(group), json.dumps(offer.to_dict()).encode(), qos=1,
                              retain=True)
        _wait(lambda: info.mid in acked, deadline, "the offer's PUBACK")
        old = state["old"]
        if old is not None and old.bundle_id != offer.bundle_id:
            # Wait for the broker to take every clearing message: a disconnect right after
            # them dropped the tail, and those chunks stayed retained at the broker for ever.
            cleared = [client.publish(chunk_topic(group, old.bundle_id, i), b"", qos=1,
                                      retain=True).mid for i in range(old.count)]
            _wait(lambda: set(cleared) <= acked, deadline, "the old chunks' PUBACKs")
    finally:
        client.disconnect()
        client.loop_stop()
    return offer


def _wait(predicate, deadline: float, what: str) -> None:
    while not predicate():
        if time.monotonic() > deadline:
            raise BundleError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- the district report ------------------------------------------------------------------------


def format_fleet(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["", "Model bundles"]
    head = (f"{'device':<20} {'group':<14} {'bundle':<12} {'state':<10} {'slot':<4}  "
            "last rollback / error")
    lines += [head, "-" * len(head)]
    for r in rows:
        state = r.get("state", "-")
        if state == "trial":
            state = f"trial ({r.get('crashes', 0)})"
        note = ""
        rb = r.get("rollback")
        if isinstance(rb, dict):
            note = f"{rb.get('from')} -> {rb.get('to')}: {rb.get('reason')}"
        if r.get("error"):
            note = f"{note}; {r['error']}" if note else r["error"]
        if r.get("download"):
            note = f"{note}; fetching {r['download']}" if note else f"fetching {r['download']}"
        if r.get("unchecked"):  # what its self-test did not compare (edge/fleet)
            said = f"self-test: {r['unchecked']}"
            note = f"{note}; {said}" if note else said
        lines.append(f"{r['device_id']:<20} {r.get('group', '-'):<14} {r.get('bundle', '-'):<12} "
                     f"{state:<10} {r.get('slot', '-'):<4}  {note or '-'}")
    return "\n".join(printable(line) for line in lines)


def bundle_main(argv: list[str]) -> int:
    ap = OneLineParser(prog="sonoedge-central bundle",
                                 description="send a signed model bundle to a device group")
    sub = ap.add_subparsers(dest="verb", required=True)
    pub = sub.add_parser("publish", help="retained, chunked, over MQTT")
    pub.add_argument("file", type=Path)
    pub.add_argument("--group", required=True)
    pub.add_argument("--mqtt-url", required=True, help="mqtt[s]://publisher@host:port")
    pub.add_argument("--password-file", default="")
    pub.add_argument("--tls-ca", default="")
    pub.add_argument("--keys", default="", help="check the signature against these *.pub")
    pub.add_argument("--chunk-kb", type=int, default=32, help="chunk size (default 32 kB)")
    exp = sub.add_parser("export", help="static files for an HTTP(S) server")
    exp.add_argument("file", type=Path)
    exp.add_argument("--group", required=True)
    exp.add_argument("--out", required=True, type=Path)
    exp.add_argument("--keys", default="")
    args = ap.parse_args(argv)
    try:
        if args.verb == "publish":
            if not 1 <= args.chunk_kb <= 4096:
                raise BundleError("--chunk-kb must be 1-4096")
            if args.tls_ca:  # before the bundle is read: a flag's fault is said first
                check_tls_file(args.tls_ca, "--tls-ca")
            t0 = time.monotonic()
            offer = publish(args.file, args.group, args.mqtt_url, args.password_file,
                            args.keys, args.chunk_kb * 1024, args.tls_ca)
            print(f"bundle {offer.version} published to group {args.group}: {offer.size} "
                  f"bytes in {offer.count} retained chunks, {time.monotonic() - t0:.1f} s")
        else:
            offer = export(args.file, args.group, args.out, args.keys)
            print(f"bundle {offer.version} exported to {args.out / args.group}")
    except (BundleError, ValueError, OSError) as exc:
        print(f"sonoedge-central bundle: {exc}", file=sys.stderr)
        return 2
    return 0
