"""Count multiply-accumulates of a PyTorch model by running it once with forward hooks.

Counts Conv2d (k_h * k_w * c_in / groups per output element) and Linear layers; pooling,
BN (folded at export), ReLU and the global mean are not MACs and are left out.
"""

from __future__ import annotations

import torch
from torch import nn


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on an input of `input_shape` (N=1)."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        per_out = kh * kw * module.in_channels // module.groups
        total += int(output.numel()) * per_out

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += int(output.numel()) * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    """Parameters after BN folding: conv/linear weights plus one bias per output channel."""
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            total += module.weight.numel() + module.weight.shape[0]
    return total
