"""Networks of the instance-optimisation cascade and their weights file.

Each stage is a small 3-D U-Net (:class:`UNet3d`) with ``depth`` resolution levels; level ``k``
has ``min(base * 2**k, 2 * base)`` channels (base 32, depth 3: 32, 64, 64). Every level has
two 3x3x3 convolutions (the first of levels ``k > 0`` with stride 2) followed by LeakyReLU(0.2);
the decoder upsamples trilinearly to the skip's exact size (odd sizes work), concatenates the
skip and applies one convolution. A 3x3x3 head gives 3 output channels (a displacement in
voxels of the stage grid, before the stage's scale). Weights are drawn from a local
``torch.Generator`` (He-normal), the head from ``N(0, head_std)`` with zero bias, so a new
cascade predicts an almost zero residual.

Weights file (``caio pretrain`` writes it, :func:`caio.refine.cascade.refine` reads it)::

    {"format_version": 1, "arch": {...}, "config": {...}, "state_dict": {name: fp16/fp32 tensor}}

It is read with :func:`caio.weights.checkpoints.load_checkpoint` (``weights_only=True``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from caio.errors import CaioInputError
from caio.io.atomic import replace_atomically
from caio.weights.checkpoints import extract_state_dict, load_checkpoint, load_into

FORMAT_VERSION = 1
"""Version of the weights-file layout written by :func:`save_weights`."""


def level_widths(base: int, depth: int) -> tuple[int, ...]:
    """Channels per U-Net level: ``min(base * 2**k, 2 * base)`` for ``k < depth``."""
    return tuple(min(base * 2**k, 2 * base) for k in range(depth))


class ConvAct(nn.Module):
    """3x3x3 convolution (padding 1, optional stride 2) + LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), 0.2)


class UNet3d(nn.Module):
    """Small 3-D U-Net: ``[B, in_channels, d0, d1, d2] -> [B, 3, d0, d1, d2]``."""

    def __init__(self, in_channels: int, base: int = 32, depth: int = 3):
        super().__init__()
        widths = level_widths(base, depth)
        self.encoder = nn.ModuleList()
        previous = in_channels
        for k, width in enumerate(widths):
            self.encoder.append(
                nn.Sequential(ConvAct(previous, width, stride=1 if k == 0 else 2), ConvAct(width, width))
            )
            previous = width
        self.decoder = nn.ModuleList(ConvAct(widths[k + 1] + widths[k], widths[k]) for k in reversed(range(depth - 1)))
        self.head = nn.Conv3d(widths[0], 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=True)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def build_cascade(
    n_stages: int, in_channels: int, base: int, depth: int, seed: int = 0, head_std: float = 1e-5
) -> nn.ModuleList:
    """``n_stages`` freshly initialised :class:`UNet3d` (deterministic for a given ``seed``)."""
    nets = nn.ModuleList(UNet3d(in_channels, base, depth) for _ in range(n_stages))
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for net in nets:
            for module in net.modules():
                if isinstance(module, nn.Conv3d):
                    fan_in = module.in_channels * math.prod(module.kernel_size)
                    std = head_std if module is net.head else math.sqrt(2.0 / (1 + 0.2**2) / fan_in)
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                    module.bias.zero_()
    return nets


def save_weights(path: str | os.PathLike, nets: nn.Module, arch: Mapping, config: Mapping, half: bool = True) -> Path:
    """Write the weights file atomically (fp16 tensors when ``half``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to("cpu", torch.float16) if half else v.detach().cpu().clone())
        for k, v in nets.state_dict().items()
    }
    payload = {"format_version": FORMAT_VERSION, "arch": dict(arch), "config": dict(config), "state_dict": state}
    return replace_atomically(path, lambda tmp: torch.save(payload, str(tmp)))


def load_weights(nets: nn.Module, source: str | os.PathLike | Mapping, arch: Mapping) -> None:
    """Load a weights file (path) or a state dict / weights payload (mapping) into ``nets``.

    Raises:
        CaioInputError: unreadable file, other architecture, or tensors that do not fit.
    """
    if isinstance(source, Mapping):
        payload, name = dict(source), "<init_state>"
    else:
        payload, name = load_checkpoint(source), str(source)
    saved_arch = payload.get("arch")
    if isinstance(saved_arch, Mapping) and dict(saved_arch) != dict(arch):
        raise CaioInputError(f"{name}: cascade architecture {dict(saved_arch)} does not match {dict(arch)}")
    state = extract_state_dict(payload, name)
    reference = nets.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    load_into(nets, state, name)
