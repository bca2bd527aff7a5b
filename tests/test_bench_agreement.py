"""`make bench`'s agreement line gives, apart, the frames where the teacher names a head
plane: the held-out frames are mostly HC18 heads, which the student is taught to name a
head plane whatever the teacher says, so the whole (82%) mixes that choice with the
student's fidelity. The counts are the shipped student's (1.4.0 against SonoNet-16 on the
271 held-out frames, 4 December 23:51 UTC)."""

from __future__ import annotations

from collections import Counter

from bench.agreement import summarise
from quantize.agreement import Agreement


def test_the_agreement_is_also_given_where_the_teacher_names_a_head_plane():
    teacher = Counter({"Brain (Tv.)": 197, "Brain (Cb.)": 40, "Background": 18,
                       "Abdominal": 7, "Kidneys": 4, "Lips": 2, "RVOT": 1, "Femur": 1,
                       "4CH": 1})
    agreed = Counter({"Brain (Tv.)": 194, "Brain (Cb.)": 24, "Background": 5})
    disagreements = Counter({"Brain (Cb.) -> Brain (Tv.)": 16, "Background -> Brain (Cb.)": 6,
                             "Background -> Brain (Tv.)": 6, "Kidneys -> Brain (Cb.)": 4,
                             "Abdominal -> Brain (Cb.)": 4, "Brain (Tv.) -> Brain (Cb.)": 3})
    lines = summarise(Agreement(271, 223, teacher, agreed, disagreements)).splitlines()
    assert lines[0].endswith("223/271 = 82.3%")
    assert lines[1] == ("  where the teacher names a head plane (Brain (Tv.), Brain (Cb.)): "
                        "218/237 = 92.0%; on its other 34 frames: 5")


def test_no_head_plane_among_the_teacher_s_labels_adds_no_line():
    lines = summarise(Agreement(3, 2, Counter({"4CH": 3}), Counter({"4CH": 2}),
                                Counter({"4CH -> 3VV": 1}))).splitlines()
    assert not any("head plane" in line for line in lines), lines
