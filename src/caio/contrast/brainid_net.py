"""Brain-ID network (``specs/brainid_spec.md`` §1) and the strict loader of its official checkpoint.

A 5-level 3-D U-Net (feature maps 64..1024, two GroupNorm(8) -> Conv3d 3x3x3 (no bias) ->
LeakyReLU(0.01) units per level, max-pool 2, nearest upsampling to the skip's size,
concatenation ``[skip, upsampled]``) plus a 1x1x1 conv head ``final_conv_image``. Module names
reproduce the official state dict (56 tensors, 65,870,051 values). Inference and the image
interface are in :mod:`caio.contrast.brainid`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from caio.errors import CaioInputError
from caio.weights.checkpoints import extract_state_dict, load_checkpoint, load_into

log = logging.getLogger(__name__)

F_MAPS: tuple[int, ...] = (64, 128, 256, 512, 1024)
NUM_GROUPS = 8
CHECKPOINT_KEY = "model"


class SingleConv(nn.Module):
    """GroupNorm on the input channels -> Conv3d 3x3x3 (no bias) -> LeakyReLU(0.01) (order ``gcl``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        groups = NUM_GROUPS if in_channels >= NUM_GROUPS else 1
        self.groupnorm = nn.GroupNorm(groups, in_channels)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.LeakyReLU = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LeakyReLU(self.conv(self.groupnorm(x)))


class DoubleConv(nn.Module):
    """Two :class:`SingleConv`; an encoder's first conv has ``max(out // 2, in)`` channels."""

    def __init__(self, in_channels: int, out_channels: int, encoder: bool) -> None:
        super().__init__()
        mid = max(out_channels // 2, in_channels) if encoder else out_channels
        self.SingleConv1 = SingleConv(in_channels, mid)
        self.SingleConv2 = SingleConv(mid, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SingleConv2(self.SingleConv1(x))


class Encoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, pool: bool) -> None:
        super().__init__()
        self.pooling = nn.MaxPool3d(kernel_size=2) if pool else None
        self.basic_module = DoubleConv(in_channels, out_channels, encoder=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(self.pooling(x) if self.pooling is not None else x)


class Decoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.basic_module = DoubleConv(in_channels, out_channels, encoder=False)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, size=skip.shape[2:], mode="nearest")
        return self.basic_module(torch.cat([skip, up], dim=1))


class UNet3D(nn.Module):
    """Brain-ID backbone; :meth:`get_features` returns ``[bottleneck, dec0, dec1, dec2, dec3]``."""

    def __init__(self, in_channels: int = 1, f_maps: Sequence[int] = F_MAPS) -> None:
        super().__init__()
        chans = [in_channels, *f_maps]
        self.encoders = nn.ModuleList(Encoder(chans[i], chans[i + 1], pool=i > 0) for i in range(len(f_maps)))
        self.decoders = nn.ModuleList(
            Decoder(f_maps[i] + f_maps[i + 1], f_maps[i]) for i in reversed(range(len(f_maps) - 1))
        )

    def get_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` ``[B, 1, X, Y, Z]`` -> 5 feature maps, coarsest first (spec §1.1 table)."""
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        feats = [skips.pop()]
        for decoder in self.decoders:
            x = decoder(skips.pop(), x)
            feats.append(x)
        return feats


class IndepHead(nn.Module):
    def __init__(self, channels: int = F_MAPS[0]) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.final_conv_image = nn.Conv3d(channels, 1, kernel_size=1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.final_conv_image(feat)


class BrainID(nn.Module):
    """Backbone + T1 head. Input ``[B, 1, X, Y, Z]`` (any size >= 16 per axis), min-max normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = UNet3D()
        self.head = IndepHead()

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.backbone.get_features(x)
        image = self.head(feats[-1])
        return (image, feats) if return_features else image


def load_brainid(path: str | os.PathLike, device: torch.device | str = "cpu") -> BrainID:
    """Build :class:`BrainID` from ``brain_id_pretrained.pth`` (fp32, eval mode, on ``device``).

    As ``specs/brainid_spec.md`` §3 says: every one of the 56 expected tensors must be present
    with its shape; tensors the network does not use (e.g. an unused ``head.final_conv_seg.*``
    of a released checkpoint) are logged in one line and ignored.

    Raises:
        CaioInputError: missing/truncated/corrupt file, no ``'model'`` entry, a missing or
            wrongly shaped tensor (the first missing keys are named), or a pickled class other
            than ``argparse.Namespace``.
    """
    checkpoint = load_checkpoint(path, allowed_globals=[argparse.Namespace])
    if not isinstance(checkpoint.get(CHECKPOINT_KEY), dict):
        raise CaioInputError(
            f"{path}: no '{CHECKPOINT_KEY}' state dict (keys: {', '.join(map(str, checkpoint))});"
            " expected the Brain-ID checkpoint layout"
        )
    state = extract_state_dict(checkpoint, path, keys=(CHECKPOINT_KEY,))
    model = BrainID()
    load_into(model, {k: v.float() for k, v in state.items()}, path, ignore_unexpected=True)
    log.debug("Brain-ID weights loaded from %s", path)
    return model.to(device).eval()
