"""Exam protocols: the planes an exam must capture, from a checked, versioned TOML file."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wire.schema import PLANES, read_toml_bounded
from wire.shown import is_one_line, read_failure, shown, shown_path

if TYPE_CHECKING:
    from edge.models.quality import Rules

PROTOCOLS_FILE = Path(__file__).resolve().parent / "protocols.toml"
MAX_PROTOCOLS_BYTES = 64 * 1024
MAX_ANATOMY_CRITERIA = 16
MAX_TITLE_CHARS = 100  # one line of the checklist's header
MAX_VERSION_CHARS = 16
MAX_SLOT_NAME_CHARS = 32  # one line of the checklist
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class ProtocolError(ValueError):
    """A one-line message naming the protocols file and the key, or the unknown protocol."""


@dataclass(frozen=True)
class Slot:
    """One line of the checklist: a plane, or a view several planes can fill (the head for
    biometry may be measured on SonoNet's transventricular or transcerebellar plane)."""

    name: str
    accepts: tuple[str, ...]
    # Also a frame the plane model abstains on ("uncertain") but on which the head segmenter
    # outlines one whole, regular skull: shown as the slot's best until a named frame beats
    # it, never counted as captured (its plane is not confirmed).
    unsure_head: bool = False


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    slots: tuple[Slot, ...]
    min_quality: float
    version: str
    # How the learned quality head's fault estimates discount a frame's score when the exam
    # chooses each plane's best frame: score * prod(1 - fault_discount * severity).
    fault_discount: float = 1.0
    # Criteria that say whether a frame shows its plane's anatomy at all (the head segmenter
    # finding one skull): a frame failing one is never kept as its plane's best frame.
    anatomy_criteria: tuple[str, ...] = ()

    @property
    def unsure_head_slot(self) -> Slot | None:
        return next((s for s in self.slots if s.unsure_head), None)

    @property
    def planes(self) -> tuple[str, ...]:
        """Every plane some slot accepts, in checklist order."""
        return tuple(p for slot in self.slots for p in slot.accepts)


def _slot(entry: object, where: str) -> Slot:
    unsure = False
    if isinstance(entry, str):
        name, accepts = entry, [entry]
    elif isinstance(entry, dict):
        name, accepts = entry.get("name"), entry.get("accepts")
        extra = sorted(set(entry) - {"name", "accepts", "unsure_head"})
        if extra:
            raise ProtocolError(f"{where}: slot {shown(name)}: unknown key {shown(extra[0])}")
        unsure = entry.get("unsure_head", False)
        if not isinstance(unsure, bool):
            raise ProtocolError(f"{where}: slot {shown(name)}: unsure_head must be true or false")
        if not isinstance(name, str) or not is_one_line(name, MAX_SLOT_NAME_CHARS):
            raise ProtocolError(f"{where}: a slot's name is 1-{MAX_SLOT_NAME_CHARS} characters "
                                "on one line, not blank")
        if not isinstance(accepts, list) or not accepts or not all(
                isinstance(p, str) for p in accepts):
            raise ProtocolError(f"{where}: slot {shown(name)} needs accepts = [plane names]")
    else:
        raise ProtocolError(f"{where}: expected a plane name or {{name, accepts}}")
    bad = [p for p in accepts if p not in PLANES or p == "Background"]
    if bad:
        raise ProtocolError(f"{where}: {shown(bad[0])} is not a standard plane")
    return Slot(name, tuple(accepts), unsure)


def load_protocols(path: Path | str | None = None) -> dict[str, Protocol]:
    path = Path(path) if path else PROTOCOLS_FILE
    try:
        data = read_toml_bounded(path, MAX_PROTOCOLS_BYTES)
    except FileNotFoundError:
        raise ProtocolError(f"{shown_path(path, None)}: protocols file not found") from None
    except (OSError, ValueError) as exc:  # PayloadError, a NUL in the path, tomllib's own
        raise ProtocolError(f"{shown_path(path, None)}: {read_failure(exc)}") from None
    path = shown_path(path, None)  # each line below names it, escaped
    unknown = sorted(set(data) - {"version", "fault_discount", "anatomy_criteria", "protocols"})
    if unknown:
        raise ProtocolError(f"{path}: unknown key {shown(unknown[0])}")
    version = data.get("version")
    if not isinstance(version, str) or not is_one_line(version, MAX_VERSION_CHARS):
        raise ProtocolError(f"{path}: version must be a string of 1-{MAX_VERSION_CHARS} "
                            "characters, not blank")
    discount = data.get("fault_discount", 1.0)
    if (isinstance(discount, bool) or not isinstance(discount, int | float)
            or not math.isfinite(discount) or not 0.0 <= discount <= 1.0):
        raise ProtocolError(f"{path}: fault_discount: must be between 0 and 1")
    anatomy = data.get("anatomy_criteria", [])
    if (not isinstance(anatomy, list) or len(anatomy) > MAX_ANATOMY_CRITERIA
            or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in anatomy)):
        raise ProtocolError(f"{path}: anatomy_criteria: expected a list of at most "
                            f"{MAX_ANATOMY_CRITERIA} criterion names")
    table = data.get("protocols")
    if not isinstance(table, dict) or not table:
        raise ProtocolError(f"{path}: protocols: expected a table of protocols")
    out = {}
    for name, entry in table.items():
        where = f"{path}: protocols.{name}"
        if not _NAME.fullmatch(name):
            raise ProtocolError(f"{where}: a name is 1-32 lower-case letters, digits, - or _")
        if not isinstance(entry, dict):
            raise ProtocolError(f"{where}: expected a table")
        extra = sorted(set(entry) - {"title", "planes", "min_quality"})
        if extra:
            raise ProtocolError(f"{where}: unknown key {shown(extra[0])}")
        title, planes = entry.get("title"), entry.get("planes")
        quality = entry.get("min_quality", 0.5)
        if not isinstance(title, str) or not is_one_line(title, MAX_TITLE_CHARS):
            raise ProtocolError(f"{where}.title: must be one line of 1-{MAX_TITLE_CHARS} "
                                "characters, not blank")
        if not isinstance(planes, list) or not 0 < len(planes) <= len(PLANES):
            raise ProtocolError(f"{where}.planes: expected a list of planes or slots")
        slots = tuple(_slot(entry, f"{where}.planes") for entry in planes)
        every = [p for slot in slots for p in slot.accepts]
        names = [s.name for s in slots]
        twice = next((x for seen in (every, names) for i, x in enumerate(seen)
                      if x in seen[:i]), None)
        if twice is not None:
            raise ProtocolError(f"{where}.planes: {shown(twice)} is listed twice")
        if sum(slot.unsure_head for slot in slots) > 1:
            raise ProtocolError(f"{where}.planes: only one slot may take unsure_head")
        if (isinstance(quality, bool) or not isinstance(quality, int | float)
                or not math.isfinite(quality) or not 0.0 <= quality <= 1.0):
            raise ProtocolError(f"{where}.min_quality: must be between 0 and 1")
        out[name] = Protocol(name, title, slots, float(quality), version, float(discount),
                             tuple(anatomy))
    return out


def _first_four(names: list[str]) -> str:
    """Names for one line: the first four, quoted, and "..." where there are more."""
    return ", ".join(shown(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")


def check_named(protocol: Protocol, labels: tuple[str, ...], model: str) -> None:
    """Every slot of the protocol is one the plane model can fill: at least one of the
    planes it accepts is among the model's labels. A model without one (a bundle trained on
    other classes) would leave that slot "not found" in every exam, as if the midwife had
    missed it; this is one line naming the protocol, the slot and the model instead."""
    named = set(labels)
    unfilled = [slot.name for slot in protocol.slots if not named & set(slot.accepts)]
    if unfilled:
        some = _first_four(unfilled)
        raise ProtocolError(
            f"protocol {shown(protocol.name)}: the plane model {model} has no label for "
            + (f"slot {some}, which" if len(unfilled) == 1 else
               f"{len(unfilled)} of its {len(protocol.slots)} slots ({some}), which")
            + " could never be captured: choose another protocol or plane model")


def check_head_planes(head_planes: tuple[str, ...], labels: tuple[str, ...], model: str
                      ) -> None:
    """Every plane `[biometry] head_planes` names is one the plane model names. A name it
    does not know (a typo such as "Brain (TV)", or a bundle trained on other classes) was
    taken without a word, and the head was never measured or shown on that plane; with
    none known, no head at all. This is one line naming the field, the names and the model."""
    unknown = [plane for plane in head_planes if plane not in labels]
    if not unknown:
        return
    names = _first_four(unknown)
    effect = ("no head is ever measured" if len(unknown) == len(head_planes) else
              "the head is never measured on " + ("it" if len(unknown) == 1 else "them"))
    what = "is not a plane" if len(unknown) == 1 else "are not planes"
    raise ProtocolError(f"biometry.head_planes: {names} {what} of the plane model {model}, "
                        f"so {effect}; its planes: "
                        + ", ".join(shown(label) for label in labels[:16]))


def check_anatomy(protocol: Protocol, rules: Rules | None) -> None:
    """Every `anatomy_criteria` name is a criterion of the quality rules the frames are
    judged by. One they do not have (a typo such as "head_fond", or a site's rules file
    without it) is never judged, so never fails: the guard that keeps another anatomy out
    of a plane's best frame was off without a word. This is one line naming both files'
    names instead. Without rules (the audit off) nothing is judged, so nothing to check."""
    if rules is None:
        return
    criteria = [r.name for r in rules.criteria]
    unknown = [name for name in protocol.anatomy_criteria if name not in criteria]
    if unknown:
        raise ProtocolError(f"protocol {shown(protocol.name)}: anatomy_criteria "
                            f"{_first_four(unknown)} {'is' if len(unknown) == 1 else 'are'} "
                            "not a criterion of the quality rules "
                            f"{shown_path(rules.path, None)}, so never judged (its criteria: "
                            f"{_first_four(criteria)})")


def find_protocol(name: str, path: Path | str | None = None) -> Protocol:
    protocols = load_protocols(path)
    if name not in protocols:
        raise ProtocolError(f"unknown protocol {shown(name)}: choose one of "
                            f"{', '.join(sorted(protocols))}")
    return protocols[name]
