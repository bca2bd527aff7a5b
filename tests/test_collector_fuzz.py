"""Issue 14: the collector under fuzz, against a real Mosquitto and a real collector process.

Seeds are the messages of a real device session (the uplink's own exam, health and status
payloads, as stored by the collector). From them 10,000 hostile payloads are made: random
bytes, byte flips, cuts and splices, deep nesting, values swapped for NaN, 1e999, huge
integers, NUL, lone surrogates, wrong types, long strings, duplicate keys, and odd topics.
Between them, every 25th message is a valid fresh one. The collector must stay up, never
print a traceback, store every valid message exactly once and nothing that the reference
validator (jsonschema) rejects, and dead-letter the rest. Bounded: about a minute.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
import uuid

import jsonschema
import paho.mqtt.client as mqtt

from tests import conftest_mqtt as fx
from tests.conftest_mqtt import run_device, wait_for
from wire import schema as wire_schema

broker, collectors = fx.broker, fx.collectors  # fixtures

N_PAYLOADS = 10_000
VALID_EVERY = 25
TIME_LIMIT_S = 120.0
WEIRD = [None, True, False, -1, 0, 2 ** 64, -(2 ** 70), 1e300, 1.5, "", "x" * 3000,
         "\u0000", "\ud800", "é", [], {}, [[[[[]]]]], {"a": {"b": {}}}]
RAW_WEIRD = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1" * 400,
             b"[" * 500 + b"]" * 500, b'"\\ud800"', b'"\\u0000"', b"0.0000001e-400"]
TOPICS = ["sonoedge/dev-a/exam", "sonoedge/dev-a/health", "sonoedge/dev-a/status"]
ODD_TOPICS = ["sonoedge/dev-a/selfie", "sonoedge/dev-a/exam/x", "sonoedge/dev-a/",
              "sonoedge/dev-a/exam/../health"]


def reference_valid(topic: str, payload: bytes) -> bool:
    """An independent opinion: jsonschema on a strict parse, and the topic's device."""
    parts = topic.split("/")
    if len(payload) > 4096 or len(parts) != 3 or parts[2] not in wire_schema.KINDS:
        return False
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_refuse)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    if not isinstance(data, dict) or data.get("kind") != parts[2]:
        return False
    try:
        if not _VALIDATORS[parts[2]].is_valid(data):
            return False
    except RecursionError:
        return False
    return data.get("device_id") == parts[1]


_VALIDATORS = {kind: jsonschema.Draft202012Validator(wire_schema.load_schema(kind))
               for kind in wire_schema.KINDS}


def _refuse(name):
    raise ValueError(name)


class Fuzzer:
    def __init__(self, seeds: list[tuple[str, dict]], rng: random.Random):
        self.seeds = seeds
        self.rng = rng
        self.seq = 10_000_000

    def fresh(self) -> tuple[str, bytes, str]:
        """A valid new message: a seed with a new msg_id and seq."""
        topic, msg = self.rng.choice(self.seeds)
        self.seq += 1
        msg = {**msg, "msg_id": str(uuid.uuid4()), "seq": self.seq}
        return topic, json.dumps(msg, separators=(",", ":")).encode(), msg["msg_id"]

    def hostile(self) -> tuple[str, bytes]:
        rng = self.rng
        topic, msg = rng.choice(self.seeds)
        text = json.dumps(msg, separators=(",", ":")).encode()
        kind = rng.randrange(9)
        if kind == 0:  # random bytes
            payload = rng.randbytes(rng.randrange(0, 600))
        elif kind == 1:  # byte flips
            data = bytearray(text)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            payload = bytes(data)
        elif kind == 2:  # cut, or spliced with another seed
            other = json.dumps(rng.choice(self.seeds)[1]).encode()
            cut = rng.randrange(len(text))
            payload = text[:cut] + (other[rng.randrange(len(other)):] if rng.random() < 0.5
                                    else b"")
        elif kind == 3:  # a value swapped for a weird one
            key = rng.choice(sorted(msg))
            payload = json.dumps({**msg, key: rng.choice(WEIRD)}).encode()
        elif kind == 4:  # a value swapped for raw text no strict parser takes
            key = rng.choice(sorted(msg))
            payload = json.dumps({**msg, key: "@@"}).encode().replace(
                b'"@@"', rng.choice(RAW_WEIRD))
        elif kind == 5:  # a nested value broken
            nested = [k for k, v in msg.items() if isinstance(v, dict) and v]
            key = rng.choice(nested) if nested else "planes"
            inner = dict(msg.get(key) or {"x": 1})
            inner[rng.choice(sorted(inner))] = rng.choice(WEIRD)
            payload = json.dumps({**msg, key: inner}).encode()
        elif kind == 6:  # a key gone, or one too many, or twice
            data = dict(msg)
            choice = rng.random()
            if choice < 0.4:
                data.pop(rng.choice(sorted(data)))
                payload = json.dumps(data).encode()
            elif choice < 0.7:
                data[f"extra{rng.randrange(9)}"] = rng.choice(WEIRD)
                payload = json.dumps(data).encode()
            else:
                key = rng.choice(sorted(data))
                payload = json.dumps(data).encode()[:-1] + b',"' + key.encode() + b'":1}'
        elif kind == 7:  # deep or wide
            depth = rng.choice([20, 100, 1000, 3000])
            payload = (b"[" * depth + b"]" * depth if rng.random() < 0.5
                       else b'{"a":' * depth + b"0" + b"}" * depth)
            if rng.random() < 0.3:
                payload = b"[" + b"1," * 2000 + b"1]"
        else:  # another device's id, or an odd topic
            if rng.random() < 0.5:
                payload = json.dumps({**msg, "device_id": "dev-b"}).encode()
            else:
                topic, payload = rng.choice(ODD_TOPICS), text
        return topic, payload


def test_the_collector_survives_10000_hostile_payloads_and_stores_every_valid_one_once(
        broker, collectors, tmp_path):
    db = str(tmp_path / "central.sqlite3")
    # Every hostile payload is to be kept as a dead letter here, so no per-device quota
    # (tests/test_collector_leftovers.py specifies the quota).
    c = collectors(broker.url("central"), db, tmp_path, "central-1",
                   extra=("--dead-letter-quota", str(10 ** 9)))
    c.wait_subscribed()
    # A real device session gives the seeds: the uplink's own payloads, as stored.
    state = tmp_path / "dev"
    run_device(state, broker.url("dev-a"), frames=300, exam_every=15, health_every=15,
               dates_every=4, drain_timeout=20)
    want = fx.produced_ids(state)
    wait_for(lambda: len(fx.stored(db, "dev-a")) >= len(want), 30, "the device session")
    time.sleep(0.5)
    conn = sqlite3.connect(db)
    seeds = [(f"sonoedge/dev-a/{k}", json.loads(p)) for k, p in conn.execute(
        "SELECT kind, payload FROM messages WHERE device_id = 'dev-a'")]
    conn.close()
    assert {t.rsplit("/", 1)[1] for t, _ in seeds} == {"exam", "health", "status", "dates"}

    rng = random.Random(1414)
    fuzz = Fuzzer(seeds, rng)
    valid: list[str] = []
    accepted_by_reference: set[str] = set()
    rejected: set[str] = set()  # digests, as the collector keys its dead letters
    examples: dict[str, tuple] = {}
    acks: dict[int, object] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzz",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set("dev-a", broker.passwords["dev-a"])
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.on_publish = lambda _c, _u, mid, rc, _p: acks.__setitem__(mid, rc)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    started = time.monotonic()
    try:
        wait_for(client.is_connected, 5, "the fuzzer connected")
        mids = []
        for i in range(N_PAYLOADS):
            if i % VALID_EVERY == 0:
                topic, payload, msg_id = fuzz.fresh()
                valid.append(msg_id)
            else:
                topic, payload = fuzz.hostile()
                if reference_valid(topic, payload):
                    accepted_by_reference.add(json.loads(payload)["msg_id"])
                elif topic.count("/") == 2:  # what sonoedge/+/+ delivers to the collector
                    digest = hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()
                    rejected.add(digest)
                    examples[digest] = (topic, payload[:300])
            mids.append(client.publish(topic, payload, qos=1).mid)
            while len(mids) - len(acks) > 500:  # bounded in flight
                time.sleep(0.001)
            assert time.monotonic() - started < TIME_LIMIT_S, "fuzzing took too long"
        wait_for(lambda: len(acks) >= len(mids), 60, "every PUBACK")
    finally:
        client.loop_stop()
        client.disconnect()
    sent_s = time.monotonic() - started
    wait_for(lambda: {r[0] for r in fx.stored(db, "dev-a", wire_schema.KINDS)}
             >= set(valid), 60, "every valid message stored")
    time.sleep(2.0)  # whatever is still on its way lands
    total_s = time.monotonic() - started
    assert not c.dead(), c.log_text()[-3000:]
    assert "Traceback" not in c.log_text()
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT msg_id FROM messages WHERE device_id = 'dev-a'").fetchall()
    dead = {d for (d,) in conn.execute("SELECT digest FROM dead_letters")}
    conn.close()
    stored_ids = [r[0] for r in rows]
    assert len(stored_ids) == len(set(stored_ids))  # each msg_id once (the primary key)
    seed_ids = {m["msg_id"] for _, m in seeds}
    # Nothing stored that is neither a seed, a valid message sent in between, nor a mutant
    # the reference validator also takes (a flipped hex digit in a msg_id is still valid).
    assert set(stored_ids) <= seed_ids | set(valid) | accepted_by_reference
    assert set(valid) <= set(stored_ids)
    # Every payload the reference rejects was acknowledged only once dead-lettered.
    missing = rejected - dead
    if missing:
        for digest in sorted(missing)[:5]:
            print("not dead-lettered:", examples.get(digest))
    assert not missing, f"{len(missing)} rejected payloads neither stored nor dead"
    print(f"\nfuzz: {N_PAYLOADS} payloads ({len(valid)} valid, {N_PAYLOADS - len(valid)} "
          f"hostile, {len(rejected)} distinct rejected) sent in {sent_s:.1f} s, all settled "
          f"in {total_s:.1f} s; {len(dead)} dead letters; 0 collector crashes")
