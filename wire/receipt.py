"""Receipts: the district's word to a device that it holds its exam summaries.

The broker's PUBACK says only that the broker took a message, and a broker may still drop
one it took: Mosquitto drops what overflows an absent collector's session queue
(``max_queued_messages``), and the box, its outbox emptied on PUBACK, had nothing left to
send again. So, after committing a batch, the collector tells each device which of its
exam, dates and withdrawal messages that batch settled: stored, found stored already, or
refused for good (a dead letter: it will never be stored either); one over its device's
quota there gets none yet (central/collector.py). The device keeps those messages in its
outbox, as sent, until their receipt, and sends one that has none after its
``[mqtt] resend_after_s`` again (the collector stores it once: its msg_id).

Topic ``sonoedge-receipt/<device_id>``, QoS 1, not retained: only central users may write
it, only that device read it (board/provision.py), and the device's persistent session
keeps the receipts that come while it is away. The payload (``schemas/receipt.schema.json``):
``{"schema": 1, "kind": "receipt", "device_id": ..., "msg_ids": [...]}``. Shared by the
collector, which builds receipts, and the device, which reads them as hostile input.
"""

from __future__ import annotations

import json

from wire.schema import PayloadError, id_pattern, load_schema, loads_bounded, validate
from wire.shown import one_line, printable

RECEIPT_PREFIX = "sonoedge-receipt"
# What a receipt is for: the district's record. Health and status are delete-on-PUBACK as
# before: one lost costs a minute of a figure the next one repeats.
RECEIPTED_KINDS = ("exam", "dates", "withdrawal")
# Ids in one receipt (the schema's maxItems): 100 ids are ~4 kB, far under any broker's
# message limit (ours: 64 kB), and a collector's batch of 500 is at most 5 receipts.
RECEIPT_MAX_IDS = load_schema("receipt")["properties"]["msg_ids"]["maxItems"]
# A receipt of RECEIPT_MAX_IDS ids is ~4.1 kB: anything larger is not one, and is refused
# before it is parsed; an object holding a list nests 2 deep.
RECEIPT_MAX_BYTES = 8192
RECEIPT_MAX_DEPTH = 2
# How long a device waits for a message's receipt before it sends the message again
# (`[mqtt] resend_after_s`). A collector that is up answers in well under a second; one
# down for a night or a weekend finds its backlog at the broker, and a device resending
# all it sent every 6 h adds only 4 copies a day of its few exams to that backlog.
DEFAULT_RESEND_AFTER_S = 6 * 3600.0
# Its range: at least a second (below it a receipt on its way is not waited for, and every
# message goes twice), at most 30 days (an exam the broker dropped would stay a month
# unsent; the broker keeps a device's session only 7 days anyway).
MIN_RESEND_AFTER_S = 1.0
MAX_RESEND_AFTER_S = 30 * 86400.0
MSG_ID_RE = id_pattern("msg_id")


def receipt_topic(device_id: str) -> str:
    return f"{RECEIPT_PREFIX}/{device_id}"


def build_receipts(device_id: str, msg_ids) -> list[bytes]:
    """The receipts telling `device_id` its `msg_ids` are done: each id once, in chunks of
    at most RECEIPT_MAX_IDS."""
    ids = sorted(set(msg_ids))
    return [json.dumps({"schema": 1, "kind": "receipt", "device_id": device_id,
                        "msg_ids": ids[i:i + RECEIPT_MAX_IDS]},
                       separators=(",", ":")).encode()
            for i in range(0, len(ids), RECEIPT_MAX_IDS)]


def parse_receipt(payload: bytes, device_id: str) -> list[str]:
    """The msg_ids of a receipt to `device_id`, read as hostile input: bounded in size and
    depth before it is parsed, then checked against its schema and its device.
    ValueError, one line saying why, for anything else."""
    try:
        data = loads_bounded(payload, RECEIPT_MAX_BYTES, RECEIPT_MAX_DEPTH)
    except PayloadError as exc:
        raise ValueError(one_line(exc)) from None
    errors = validate(data, load_schema("receipt"))
    if errors:
        # cut, and printable: a path names the hostile payload's own keys
        raise ValueError("schema: " + printable("; ".join(errors[:3]))[:300])
    if data["device_id"] != device_id:
        raise ValueError(f"it names device {data['device_id']!r}, not {device_id!r}")
    return list(data["msg_ids"])
