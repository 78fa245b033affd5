"""Building blocks of the VFA (Vector Field Attention) network, written from ``shared/specs/vfa_spec.md``.

Module and attribute names are chosen so that the state dict has exactly the keys of the
official LUMIR checkpoint (spec §3.2, 103 tensors). Everything here is shape-generic; the
LUMIR hyper-parameters live in :class:`caio.backbone.vfa.VFAConfig`.

Memory: the forward passes drop references to large intermediates as early as possible and
apply the activation in place, so that full-size inference (160x224x192) stays lean. The
attention never materialises the unfolded ``[N, 27, C]`` key tensor: it loops over the 27
neighbour offsets (:func:`neighbourhood_attention`).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

NEGATIVE_SLOPE = 0.01
"""Leaky-ReLU slope (PyTorch default) used after every normalised convolution."""

NEIGHBOUR_OFFSETS: tuple[tuple[int, int, int], ...] = tuple(itertools.product((-1, 0, 1), repeat=3))
"""The 27 offsets of a 3x3x3 neighbourhood, first axis slowest (row ``9a+3b+c`` = ``(a-1, b-1, c-1)``)."""


def conv3(in_channels: int, out_channels: int) -> nn.Conv3d:
    """3x3x3 convolution, stride 1, zero padding 1, with bias."""
    return nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)


def norm(channels: int) -> nn.InstanceNorm3d:
    """Instance norm with a learned affine and no running statistics (no buffers), eps 1e-5."""
    return nn.InstanceNorm3d(channels, affine=True, track_running_stats=False)


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu_(x, NEGATIVE_SLOPE)


class DoubleConv(nn.Module):
    """conv1 -> norm1 -> act -> conv2 -> norm2 -> act (``[B, in, ...] -> [B, out, ...]``)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = conv3(in_channels, mid_channels)
        self.norm1 = norm(mid_channels)
        self.conv2 = conv3(mid_channels, out_channels)
        self.norm2 = norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _act(self.norm1(self.conv1(x)))
        return _act(self.norm2(self.conv2(x)))


class UpBlock(nn.Module):
    """Trilinear x2 (align_corners) -> conv -> norm -> act, then concatenate ``[result, skip]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = conv3(in_channels, out_channels)
        self.norm = norm(out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
        x = _act(self.norm(self.conv(x)))
        return torch.cat([x, skip], dim=1)


class FeatureNet(nn.Module):
    """The Siamese U-Net ("encoder") run separately on the fixed and on the moving image.

    Attribute creation order reproduces the official state-dict order (ModuleLists first).
    Channels at level ``i`` (``c_i = start * 2**i``, capped at ``max_channels``): see spec §1.4.
    """

    def __init__(self, in_channels: int, downsamples: int, start_channels: int, max_channels: int) -> None:
        super().__init__()
        cap = lambda c: min(max_channels, c)  # noqa: E731
        c = [start_channels * 2**i for i in range(downsamples + 1)]
        self.encoder_conv = nn.ModuleList(
            DoubleConv(cap(c[i]), cap(2 * c[i]), cap(2 * c[i])) for i in range(downsamples)
        )
        self.pooling = nn.ModuleList(nn.AvgPool3d(kernel_size=2, stride=2) for _ in range(downsamples))
        self.decoder_conv = nn.ModuleList(
            DoubleConv(2 * cap(2 * c[i]), cap(2 * c[i]), cap(2 * c[i])) for i in range(downsamples)
        )
        self.upsampling = nn.ModuleList(UpBlock(cap(4 * c[i]), cap(2 * c[i])) for i in range(downsamples))
        self.in_norm = norm(in_channels)
        self.in_conv = conv3(in_channels, start_channels)
        self.bottleneck_conv = DoubleConv(cap(c[downsamples]), cap(2 * c[downsamples]), cap(2 * c[downsamples]))
        self.feature_channels = [cap(2 * c[i]) for i in range(downsamples + 1)]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``[B, in, D0, D1, D2]`` (sizes divisible by ``2**downsamples``) -> list fine-to-coarse:
        index ``i`` is ``[B, feature_channels[i], D0 / 2**i, ...]``."""
        x = _act(self.in_conv(self.in_norm(image)))
        skips: list[torch.Tensor | None] = []
        for conv, pool in zip(self.encoder_conv, self.pooling):
            x = conv(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck_conv(x)
        features: list[torch.Tensor | None] = [None] * len(skips) + [x]
        for i in reversed(range(len(skips))):
            skip, skips[i] = skips[i], None
            x = self.upsampling[i](x, skip)
            del skip
            x = self.decoder_conv[i](x)
            features[i] = x
        return features  # type: ignore[return-value]


class NeighbourhoodAttention(nn.Module):
    """Parameter-free module: see :func:`neighbourhood_attention`."""

    def forward(self, query: torch.Tensor, keys_padded: torch.Tensor) -> torch.Tensor:
        return neighbourhood_attention(query, keys_padded)


def _dot(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Per-voxel inner product over channels, ``[B, C, ...] x [B, C, ...] -> [B, ...]``, one channel
    at a time (no ``[B, C, ...]`` temporary)."""
    out = query[:, 0] * keys[:, 0]
    for c in range(1, query.shape[1]):
        out.addcmul_(query[:, c], keys[:, c])
    return out


SLAB_ELEMENTS = 1 << 20
"""On the CPU the attention runs slab by slab along axis 0, about this many query elements per
slab, so that the 27 shifted reads hit the cache (about 4x faster than whole-volume passes)."""


def neighbourhood_attention(query: torch.Tensor, keys_padded: torch.Tensor, slab: int | None = None) -> torch.Tensor:
    """Softmax-weighted mean of the 27 neighbour offsets (VFA's vector field attention).

    ``logit_j(p) = <q(p), k(p + offset_j)> / sqrt(C)``, ``u(p) = sum_j softmax_j(p) * offset_j``.
    Computed in two passes over the offsets (maximum, then exponentials), each logit map
    being one shifted dot product; memory is O(N) instead of O(27 N C).

    Args:
        query: ``[B, C, d, h, w]`` projected fixed features.
        keys_padded: ``[B, C, d+2, h+2, w+2]`` projected moving features of the 1-voxel padded volume.
        slab: axis-0 slices per chunk; None = about :data:`SLAB_ELEMENTS` on the CPU, whole volume on GPUs.
    Returns:
        ``[B, 3, d, h, w]`` displacement in voxels of this level, each component in [-1, 1],
        channel ``k`` along array axis ``k``. Same dtype as ``query``.
    """
    b, channels, d, h, w = query.shape
    if tuple(keys_padded.shape[2:]) != (d + 2, h + 2, w + 2):
        raise ValueError(f"keys {tuple(keys_padded.shape)} must be query {tuple(query.shape)} padded by 1")
    if slab is None:
        slab = d if query.device.type != "cpu" else max(1, SLAB_ELEMENTS // (channels * h * w))
    if slab >= d:
        return _attention_block(query, keys_padded)
    out = query.new_empty((b, 3, d, h, w))
    for start in range(0, d, slab):
        stop = min(start + slab, d)
        out[:, :, start:stop] = _attention_block(query[:, :, start:stop], keys_padded[:, :, start : stop + 2])
    return out


def _attention_block(query: torch.Tensor, keys_padded: torch.Tensor) -> torch.Tensor:
    """:func:`neighbourhood_attention` on one block (keys padded by 1 on every side)."""
    d, h, w = query.shape[2:]
    query = query / math.sqrt(query.shape[1])

    def logit(offset: tuple[int, int, int]) -> torch.Tensor:
        a, b, c = (o + 1 for o in offset)
        return _dot(query, keys_padded[:, :, a : a + d, b : b + h, c : c + w])

    peak = logit(NEIGHBOUR_OFFSETS[0])
    for offset in NEIGHBOUR_OFFSETS[1:]:
        torch.maximum(peak, logit(offset), out=peak)
    total = torch.zeros_like(peak)
    acc = query.new_zeros((query.shape[0], 3, d, h, w))
    for offset in NEIGHBOUR_OFFSETS:
        weight = logit(offset).sub_(peak).exp_()
        total.add_(weight)
        for axis, o in enumerate(offset):
            if o:
                acc[:, axis].add_(weight, alpha=o)
    return acc.div_(total.unsqueeze(1))
