"""The plane-classifier students: `MobileStudent` (1.2, inverted residuals) and `PlaneStudent`
(1.0-1.1, a short SonoNet-style VGG initialised from the teacher).

PlaneStudent:

Plain 3x3 conv + BN + ReLU (BN folds into the conv at export; XNNPACK's int8 kernels run
these best), max-pooling, then SonoNet's own adaptation head (1x1 conv -> 1x1 conv to 14
class maps) and a global mean. At 112x144 input and three pools the class maps are 14x18,
the same grid as the teacher's at 224x288, so the maps can be distilled cell by cell.

`init_from_teacher` copies the teacher's filters into the student: where the student's layer
is narrower, it keeps the teacher's channels with the largest BN gamma (output side) and the
matching input channels, so the student starts from the teacher's own features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quantize.teacher import BN_EPS, NUM_CLASSES, SonoNet16, conv_bn_layers

# Each stage: conv widths, then a 2x2 max-pool except after the last stage.
# The teacher's first four blocks: 283 M MACs at 112x144, under a quarter of the teacher's.
DEFAULT_STAGES: tuple[tuple[int, ...], ...] = ((16, 16), (32, 32), (64, 64, 64), (128, 128, 128))
# For each student conv, which teacher conv it is initialised from (teacher.conv_bn_layers order).
DEFAULT_TEACHER_MAP: tuple[int, ...] = tuple(range(10))
HEAD_WIDTH = 64


def _conv_bn(cin: int, cout: int, k: int, relu: bool = True, stride: int = 1,
             groups: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PlaneStudent(nn.Module):
    """`forward(x)` gives logits (1, 14); `forward_maps(x)` gives (logits, class maps)."""

    def __init__(self, stages: tuple[tuple[int, ...], ...] = DEFAULT_STAGES,
                 head_width: int = HEAD_WIDTH, stem_stride: int = 1) -> None:
        super().__init__()
        self.stages_spec = tuple(tuple(s) for s in stages)
        self.stem_stride = stem_stride
        blocks: list[nn.Module] = []
        cin = 1
        for i, widths in enumerate(self.stages_spec):
            layers: list[nn.Module] = []
            for j, cout in enumerate(widths):
                stride = stem_stride if i == j == 0 else 1
                layers.append(_conv_bn(cin, cout, 3, stride=stride))
                cin = cout
            if i < len(self.stages_spec) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)
        self.adaptation = nn.Sequential(
            _conv_bn(cin, head_width, 1), _conv_bn(head_width, NUM_CLASSES, 1, relu=False)
        )

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.adaptation(self.features(x))
        return maps.mean(dim=(2, 3)), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)[0]


def init_from_teacher(student: PlaneStudent, teacher: SonoNet16,
                      teacher_map: tuple[int, ...] = DEFAULT_TEACHER_MAP,
                      input_gain: float = 1.0) -> PlaneStudent:
    """Copy teacher filters (channel-selected by BN gamma) into the student's convs and head.

    `input_gain` = teacher input scale / student input scale (255 when the teacher sees
    255 * z-score and the student plain z-score), folded into the first conv.
    """
    s_layers = conv_bn_layers(student)
    t_layers = conv_bn_layers(teacher)
    n_body = len(s_layers) - 2
    if len(teacher_map) != n_body:
        raise ValueError(f"teacher_map has {len(teacher_map)} entries for {n_body} convs")
    sources = [*teacher_map, len(t_layers) - 2, len(t_layers) - 1]
    keep_in = torch.arange(1)  # the grey input channel
    with torch.no_grad():
        for (s_conv, s_bn), src in zip(s_layers, sources, strict=True):
            t_conv, t_bn = t_layers[src]
            cout = s_conv.out_channels
            if cout == t_conv.out_channels:
                keep_out = torch.arange(cout)
            else:
                keep_out = torch.argsort(t_bn.weight.abs(), descending=True)[:cout].sort().values
            w = t_conv.weight[keep_out]
            if w.shape[1] != s_conv.in_channels:
                # The input side follows the previous layer's selection when the teacher layer
                # reads exactly what we kept; otherwise take the first channels that fit.
                idx = keep_in if w.shape[1] > int(keep_in.max()) and len(keep_in) == \
                    s_conv.in_channels else torch.arange(s_conv.in_channels)
                w = w[:, idx] * (w.shape[1] / s_conv.in_channels) ** 0.5
            if w.shape[2:] != s_conv.weight.shape[2:]:
                continue
            if s_conv.in_channels == 1:
                w = w * input_gain
            s_conv.weight.copy_(w)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(s_bn, name).copy_(getattr(t_bn, name)[keep_out])
            keep_in = keep_out
    return student


# ---------------------------------------------------------------- the 1.2 student
@dataclass(frozen=True)
class MobileSpec:
    """The inverted-residual student's shape (MobileNetV2 blocks, Sandler et al. CVPR 2018).

    `unshuffle`: the input is first rearranged into r x r pixel blocks (pixel_unshuffle), so
    the first conv is an ordinary dense conv over r*r channels at 1/r of the resolution.
    Measured (ai-edge-litert 2.3.0, AMD EPYC, AVX2, no VNNI): a conv straight on the
    one-channel 224x288 input becomes an int8 DEPTHWISE_CONV_2D with a depth multiplier,
    which XNNPACK runs 3.5x slower than fp32 (0.97 vs 0.27 ms for 2.3 M MACs); after the
    unshuffle it is a CONV_2D, 0.19 ms. Inverted-residual stages at 112x144 cost more int8
    time than their MACs suggest, so the net starts at 56x72.
    `stages`: (expansion, width, blocks, stride, kernel) per stage; the first block of a
    stage carries the stride. The last stage ends at 1/16 of the input: the 14 class maps
    lie on the teacher's own 14x18 grid, so they are distilled cell by cell.
    """

    unshuffle: int = 4
    stem_width: int = 24
    stages: tuple[tuple[int, int, int, int, int], ...] = (
        (4, 40, 3, 2, 3), (4, 80, 4, 2, 5), (4, 112, 1, 1, 5))
    head_width: int = HEAD_WIDTH

    def to_dict(self) -> dict:
        return {"unshuffle": self.unshuffle, "stem_width": self.stem_width,
                "stages": [list(s) for s in self.stages], "head_width": self.head_width}

    @classmethod
    def from_dict(cls, data: dict) -> MobileSpec:
        return cls(unshuffle=int(data["unshuffle"]), stem_width=int(data["stem_width"]),
                   stages=tuple(tuple(int(v) for v in s) for s in data["stages"]),
                   head_width=int(data["head_width"]))

    def describe(self) -> str:
        stages = ", ".join(f"{n}x IR(t={t}, {c} ch, {k}x{k} dw{', stride 2' if s == 2 else ''})"
                           for t, c, n, s, k in self.stages)
        return (f"pixel-unshuffle {self.unshuffle}x{self.unshuffle} -> conv3x3 "
                f"{self.unshuffle ** 2}->{self.stem_width} -> {stages} -> 1x1 head to "
                f"{self.head_width} then 14 class maps at 1/16 of the input -> global mean")


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU) -> kxk depthwise (ReLU, maybe strided) -> 1x1 project (linear),
    plus the input when shapes allow. Plain ReLU (not ReLU6): int8 calibration sets the
    clipping range from real activations anyway."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [_conv_bn(hidden, hidden, kernel, stride=stride, groups=hidden),
                   _conv_bn(hidden, cout, 1, relu=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileStudent(nn.Module):
    """`forward(x)` gives logits (1, 14); `forward_maps(x)` gives (logits, class maps).

    The logits are the global mean of the class maps, as in SonoNet, so the named plane's
    map is there to be shown (a later second output) and to be distilled.
    """

    def __init__(self, spec: MobileSpec = MobileSpec()) -> None:
        super().__init__()
        self.spec = spec
        cin = spec.unshuffle ** 2
        layers: list[nn.Module] = [_conv_bn(cin, spec.stem_width, 3)]
        cin = spec.stem_width
        for expand, width, blocks, stride, kernel in spec.stages:
            for i in range(blocks):
                layers.append(InvertedResidual(cin, width, stride if i == 0 else 1, expand,
                                               kernel))
                cin = width
        self.features = nn.Sequential(*layers)
        self.adaptation = nn.Sequential(
            _conv_bn(cin, spec.head_width, 1),
            _conv_bn(spec.head_width, NUM_CLASSES, 1, relu=False))

    def forward_hidden(self, x: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, class maps, the head's hidden layer): the last is what the feature
        term (`distil.TrainSettings.feature_weight`) matches to the teacher's own."""
        hidden = self.adaptation[0](self.features(F.pixel_unshuffle(x, self.spec.unshuffle)))
        maps = self.adaptation[1](hidden)
        return maps.mean(dim=(2, 3)), maps, hidden

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, maps, _ = self.forward_hidden(x)
        return logits, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)[0]


def load_student(path) -> nn.Module:
    """A trained student from its checkpoint, in eval mode: the checkpoint's recorded
    `student_spec` gives a MobileStudent; checkpoints without one are 1.0-1.1 VGG students."""
    state = torch.load(path, weights_only=False)
    spec = state.get("student_spec")
    student = MobileStudent(MobileSpec.from_dict(spec)) if spec else PlaneStudent(stem_stride=2)
    student.load_state_dict(state["model"])
    return student.eval()
