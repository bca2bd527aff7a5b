"""SonoNet-16, the teacher, rebuilt in plain PyTorch from the authors' released weights.

Built from `SonoNet16.npz` (Lasagne parameter order: W, beta, gamma, mean, inv_std per
layer; BN epsilon 1e-4; no filter flipping), so nothing is downloaded and nothing
third-party is trusted beyond the weights themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

BN_EPS = 1e-4
BLOCKS = [[16, 16], [32, 32], [64, 64, 64], [128, 128, 128], [128, 128, 128]]
NUM_CLASSES = 14


def _conv_bn(cin: int, cout: int, k: int, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SonoNet16(nn.Module):
    """VGG-like features, a 1x1 adaptation head, global mean pooling.

    `forward` returns logits; `forward_maps` also returns the 14 class maps before pooling
    (SonoNet's localisation maps), which the student learns to reproduce.
    """

    def __init__(self) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        cin = 1
        for i, widths in enumerate(BLOCKS):
            layers: list[nn.Module] = []
            for cout in widths:
                layers.append(_conv_bn(cin, cout, 3))
                cin = cout
            if i < len(BLOCKS) - 1:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        self.adaptation = nn.Sequential(
            _conv_bn(cin, 64, 1), _conv_bn(64, NUM_CLASSES, 1, relu=False)
        )

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.adaptation(self.features(x))
        return maps.mean(dim=(2, 3)), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)[0]


def conv_bn_layers(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return list(zip(convs, bns, strict=True))


def load_teacher(npz_path: Path) -> SonoNet16:
    """The teacher in eval mode with the released weights; a clear error on a bad file."""
    try:
        arrays = np.load(npz_path)
        params = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{npz_path}: not a SonoNet-16 weight file ({exc})") from None
    model = SonoNet16()
    layers = conv_bn_layers(model)
    if len(params) != 5 * len(layers):
        raise ValueError(f"{npz_path}: expected {5 * len(layers)} arrays, found {len(params)}")
    with torch.no_grad():
        for (conv, bn), i in zip(layers, range(0, len(params), 5), strict=True):
            weight, beta, gamma, mean, inv_std = params[i : i + 5]
            if tuple(weight.shape) != tuple(conv.weight.shape):
                raise ValueError(f"{npz_path}: arr_{i} has shape {weight.shape}, "
                                 f"expected {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(weight))
            bn.bias.copy_(torch.from_numpy(beta))
            bn.weight.copy_(torch.from_numpy(gamma))
            bn.running_mean.copy_(torch.from_numpy(mean))
            bn.running_var.copy_(torch.from_numpy(1.0 / inv_std.astype(np.float64) ** 2 - BN_EPS))
    return model.eval()


def teacher_batches(views: np.ndarray, batch: int = 32):
    """uint8 teacher-res views as the teacher reads them, `batch` at a time (normalised,
    channels-last): the one loop every teacher pass goes through (under the caller's
    `torch.inference_mode()`)."""
    from quantize.specs import TEACHER_SPEC, norm_batch

    for i in range(0, len(views), batch):
        x = norm_batch(views[i : i + batch], TEACHER_SPEC)
        yield x.contiguous(memory_format=torch.channels_last)


def teacher_targets(teacher, views: np.ndarray,
                    batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Teacher logits (n, 14) and class maps (n, 14, h, w) for uint8 teacher-res views.
    `teacher` is a SonoNet16 or a FastTeacher (anything with `forward_maps`)."""
    logits, maps = [], []
    with torch.inference_mode():
        for x in teacher_batches(views, batch):
            lg, mp = teacher.forward_maps(x)
            logits.append(lg.numpy())
            maps.append(mp.contiguous().numpy())
    return np.concatenate(logits), np.concatenate(maps)
