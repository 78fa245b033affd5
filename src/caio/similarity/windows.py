"""Cubic windows of the local similarity terms: box sums (zeros outside the volume) and box means (replicate
padding). Gaussian windows are :func:`caio.spatial.gaussian_blur`; the CPU kernels' equivalents are in
:mod:`caio.kernels.filters`.

Tensors are ``[B, C, D0, D1, D2]``; a window of half-width ``radius`` spans ``2 radius + 1`` voxels per axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over a cube of ``2 radius + 1`` voxels around every voxel (zeros outside the volume).

    Separable: one cumulative sum per axis.

    Args:
        x: ``[B, C, D0, D1, D2]``.
        radius: half-width in voxels (``0`` returns ``x``).
    Returns:
        Same shape as ``x``.
    """
    if radius <= 0:
        return x
    out = x
    for axis in (2, 3, 4):
        n = out.shape[axis]
        pad = [0, 0] * (4 - axis) + [radius + 1, radius]
        csum = F.pad(out, pad).cumsum(axis)
        out = csum.narrow(axis, 2 * radius + 1, n) - csum.narrow(axis, 0, n)
    return out


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a cube of side ``2 * radius + 1`` with replicate padding (same shape).

    Separable: the once-padded volume is summed over ``2 * radius + 1`` shifted views along each
    axis in turn (``3 k`` additions per voxel; faster on a CPU than ``avg_pool3d``, whose result it equals).
    """
    if radius <= 0:
        return x
    k = 2 * radius + 1
    x = F.pad(x, [radius] * 6, mode="replicate")
    for dim in (2, 3, 4):
        n = x.shape[dim] - 2 * radius
        total = x.narrow(dim, 0, n).clone()
        for offset in range(1, k):
            total += x.narrow(dim, offset, n)
        x = total
    return x / float(k**3)
