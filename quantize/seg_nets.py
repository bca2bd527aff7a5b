"""Head segmenters: the U-Net teacher, the small U-Net (student and plain baseline) and a
DeepLabv3+-lite baseline. All take (N, 1, H, W) z-scored frames and return (N, 1, H, W)
head logits at the input resolution; `forward_all` also returns the feature maps used
for attention transfer. Built from conv/BN/ReLU, max-pool, bilinear resize and concat
only, which litert_torch converts and ai-edge-quantizer turns fully int8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UNET_WIDTHS = (16, 32, 64, 128, 256)  # the 1.1.0 teacher: 2.5 s a training step, too slow
STUDENT_WIDTHS = (8, 16, 32, 64)
# The teacher is the student's own DeepLabv3+-lite design reading 1.5x the student's input
# (240x360 against 160x240), its atrous rates widened in step so a big head stays inside
# its context. The 1.2.0-1.3.0 teacher was 4x wider at the student's input and measured
# no better than its students (1.80 against 1.85 mm): seven such nets averaged knew
# nothing the student lacked. Reading more input it was the first teacher better than the
# student, and distillation from it paid (docs/measurements.md, "A net built for the larger
# input").
TEACHER_DEEPLAB = {"rates": (3, 6, 9)}
TEACHER_INPUT = (240, 360)  # height, width
STUDENT_INPUT = (160, 240)


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def sep_conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1,
                dilation: int = 1) -> nn.Sequential:
    """A k x k conv as depthwise k x k then pointwise 1x1 (MobileNet's split), each with
    BN and ReLU: about k*k times fewer multiply-adds where cin is wide. int8 on a CPU
    without VNNI pays per multiply-add (issue 13), so fewer of them is what carries there."""
    if k == 1 or cin == 1:
        return conv_bn(cin, cout, k, stride, dilation)
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cin, k, stride, pad, dilation=dilation, groups=cin,
                                   bias=False),
                         nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout))


def up2(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class UNet(nn.Module):
    """Ronneberger-style U-Net: double 3x3 conv blocks, max-pool down, bilinear up + concat.

    `widths` gives the channels per level; len(widths) - 1 pools. Attention-transfer taps:
    the bottleneck and every decoder level (coarse to fine)."""

    def __init__(self, widths: tuple[int, ...] = STUDENT_WIDTHS):
        super().__init__()
        self.widths = tuple(widths)
        self.down = nn.ModuleList()
        cin = 1
        for w in widths:
            self.down.append(double_conv(cin, w))
            cin = w
        self.up = nn.ModuleList(double_conv(widths[i + 1] + widths[i], widths[i])
                                for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        feats = [x]
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = block(torch.cat([up2(x, skip), skip], 1))
            feats.append(x)
        return self.head(x), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]


class DeepLabLite(nn.Module):
    """DeepLabv3+-style: a light strided encoder to 1/8 (residual-free conv-BN-ReLU,
    dilated at 1/8), ASPP (1x1 + 3x3 at rates 2, 4, 6, plus the 1x1 'rate 1' branch; the
    image-pooling branch is left out), decoder fusing the ASPP output upsampled to 1/4 with
    reduced low-level 1/4 features, then bilinear x4 to the input. From scratch."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 24, 48, 64), aspp: int = 48,
                 rates: tuple[int, ...] = (2, 4, 6), low: int = 16, separable: bool = False):
        super().__init__()
        w1, w2, w3, w4 = widths
        block = sep_conv_bn if separable else conv_bn
        self.stem = nn.Sequential(block(1, w1, stride=2), block(w1, w1))          # 1/2
        self.enc2 = nn.Sequential(block(w1, w2, stride=2), block(w2, w2))         # 1/4
        self.enc3 = nn.Sequential(block(w2, w3, stride=2), block(w3, w3))         # 1/8
        self.enc4 = nn.Sequential(block(w3, w4, dilation=2), block(w4, w4, dilation=2))
        self.aspp = nn.ModuleList([block(w4, aspp, k=1)] +
                                  [block(w4, aspp, dilation=r) for r in rates])
        self.project = block(aspp * (len(rates) + 1), aspp, k=1)
        self.low = block(w2, low, k=1)
        self.decode = nn.Sequential(block(aspp + low, aspp), block(aspp, aspp))
        self.head = nn.Conv2d(aspp, 1, 1)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        size = x.shape[-2:]
        low = self.enc2(self.stem(x))
        deep = self.enc4(self.enc3(low))
        a = self.project(torch.cat([b(deep) for b in self.aspp], 1))
        d = self.decode(torch.cat([up2(a, low), self.low(low)], 1))
        out = F.interpolate(self.head(d), size=size, mode="bilinear", align_corners=False)
        return out, [deep, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]


def make_net(kind: str) -> nn.Module:
    if kind == "teacher":
        return DeepLabLite(**TEACHER_DEEPLAB)
    if kind == "unet_teacher":
        return UNet(UNET_WIDTHS)
    if kind in ("student", "unet_small"):
        return UNet(STUDENT_WIDTHS)
    if kind in ("deeplab", "deeplab_student"):
        return DeepLabLite()
    if kind == "deeplab_separable":  # tried for the AVX2 CPU (notebook, 5 December)
        return DeepLabLite(separable=True)
    if kind == "deeplab_separable_wide":
        return DeepLabLite((24, 32, 64, 96), aspp=64, low=24, separable=True)
    raise ValueError(f"unknown segmenter {kind!r}")


def input_size(kind: str) -> tuple[int, int]:
    """(height, width) a net of `kind` reads: the teacher reads more than its students."""
    return TEACHER_INPUT if kind == "teacher" else STUDENT_INPUT


def describe(kind: str) -> str:
    if kind == "teacher":
        return ("DeepLabv3+-lite at 240x360 (1.5x the student's input): strided conv encoder "
                "16-24-48 to 1/8, dilated (2) 64-ch block, ASPP 1x1 + 3x3 rates 3/6/9 (48 "
                "ch, no image pooling), 1x1 low-level skip from 1/4, two 3x3 decoder convs, "
                "bilinear x4")
    if kind == "unet_teacher":
        return (f"U-Net, double conv3x3-BN-ReLU per level, widths {list(UNET_WIDTHS)}, "
                "max-pool down, bilinear up + concat skips, 1x1 head to 1 logit map")
    if kind in ("student", "unet_small"):
        return (f"small U-Net, double conv3x3-BN-ReLU per level, widths "
                f"{list(STUDENT_WIDTHS)}, max-pool down, bilinear up + concat skips, 1x1 "
                "head to 1 logit map")
    if kind.startswith("deeplab_separable"):
        return ("DeepLabv3+-lite with each 3x3 conv but the stem's first split into a "
                "depthwise 3x3 and a pointwise 1x1" + (", widths 24-32-64-96, ASPP 64, skip 24"
                                                       if kind.endswith("_wide") else ""))
    return ("DeepLabv3+-lite: strided conv encoder 16-24-48 to 1/8, dilated (2) 64-ch block, "
            "ASPP 1x1 + 3x3 rates 2/4/6 (48 ch, no image pooling), 1x1 low-level skip from "
            "1/4, two 3x3 decoder convs, bilinear x4")
