"""Contrast-invariant MIND-SSC descriptors (Heinrich et al., MICCAI 2013).

MIND-SSC ("modality independent neighbourhood descriptor, self-similarity context") describes
each voxel by how similar small patches around it are to each other, not by its intensity, so
a T1-like and a T2-like image of the same anatomy get similar descriptors.

Construction (written from the paper's description):

* Take the six neighbours of a voxel at distance ``dilation`` along the array axes
  (``+-dilation`` on axis 0, 1, 2).
* Of the 15 pairs of these neighbours, keep the 12 that are ``sqrt(2) * dilation`` apart
  (the edges of the octahedron they span; opposite neighbours are left out).
* For each kept pair ``(a, b)`` the patch distance is the mean over a cubic patch of side
  ``2 * radius + 1`` of ``(I(x + a + k) - I(x + b + k))**2``.
* A local variance estimate ``V(x)`` is the mean of the 12 distances, clamped to
  ``[1e-3, 1e3] * mean_x V`` so that flat regions (background) do not divide by zero.
* The descriptor is ``exp(-D / V)``, divided by its maximum over the 12 channels (so each
  voxel's largest entry is 1).

Intensity normalisation happens in one place, :func:`normalize_intensity`: the image is divided
by a robust maximum (99.5th percentile of the non-zero voxels). MIND itself is invariant to the
global intensity scale up to the variance clamp.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F

from caio.kernels.mind import mind_ssc_numpy
from caio.similarity.windows import box_mean

MIND_CHANNELS = 12
"""Number of MIND-SSC channels (pairs of the six-neighbourhood at distance sqrt(2))."""


def six_neighbourhood(dilation: int) -> list[tuple[int, int, int]]:
    """Offsets ``(o0, o1, o2)`` in voxels of the 6 neighbours at distance ``dilation``."""
    offsets = []
    for axis in range(3):
        for sign in (-1, 1):
            o = [0, 0, 0]
            o[axis] = sign * dilation
            offsets.append(tuple(o))
    return offsets


def ssc_pairs() -> list[tuple[int, int]]:
    """Indices into :func:`six_neighbourhood` of the 12 neighbour pairs on different axes."""
    return [(i, j) for i, j in combinations(range(6), 2) if i // 2 != j // 2]


def normalize_intensity(image: torch.Tensor, quantile: float = 0.995) -> torch.Tensor:
    """Divide by the ``quantile`` of the non-zero voxels (robust maximum) and clip to [0, 1.5].

    Args:
        image: ``[1, 1, D0, D1, D2]`` intensities (caio images are in [0, 255]).
    Returns:
        Same shape, float32, about [0, 1].
    """
    flat = image.detach().flatten().float()
    values = flat[flat > 0]
    if values.numel() == 0:
        return torch.zeros_like(image, dtype=torch.float32)
    stride = max(1, values.numel() // 1_000_000)  # torch.quantile is limited to 16M elements
    top = torch.quantile(values[::stride], quantile)
    top = top if float(top) > 0 else values.max()
    return (image.float() / top).clamp(0.0, 1.5)


def _shifted(padded: torch.Tensor, offset: tuple[int, int, int], pad: int, shape: tuple[int, ...]) -> torch.Tensor:
    """View of ``padded`` (padded by ``pad`` per side) equal to ``image(x + offset)``."""
    s = [slice(pad + o, pad + o + n) for o, n in zip(offset, shape)]
    return padded[:, :, s[0], s[1], s[2]]


def mind_ssc(image: torch.Tensor, radius: int = 2, dilation: int = 2, normalize: bool = True) -> torch.Tensor:
    """MIND-SSC descriptors of a 3-D image.

    Args:
        image: ``[1, 1, D0, D1, D2]`` (or ``[B, 1, ...]``) intensities, any scale
            (caio images are in [0, 255]).
        radius: patch half-width in voxels (patch side ``2 * radius + 1``).
        dilation: distance in voxels of the six neighbours that are compared.
        normalize: apply :func:`normalize_intensity` first (per batch element).
    Returns:
        ``[B, 12, D0, D1, D2]`` float32 descriptors in (0, 1], the largest channel of
        every voxel equal to 1.
    """
    if image.dim() != 5 or image.shape[1] != 1:
        raise ValueError(f"image must be [B, 1, D0, D1, D2], got {tuple(image.shape)}")
    if radius < 0 or dilation < 1:
        raise ValueError(f"radius must be >= 0 and dilation >= 1, got {radius}, {dilation}")
    img = image.float()
    if normalize:
        img = torch.cat([normalize_intensity(img[b : b + 1]) for b in range(img.shape[0])])
    if img.device.type == "cpu" and not img.requires_grad:  # fused Numba passes, same result
        first, second = (np.array([six_neighbourhood(dilation)[p[side]] for p in ssc_pairs()]) for side in (0, 1))
        out = img.new_empty((img.shape[0], MIND_CHANNELS, *img.shape[2:]))
        for b in range(img.shape[0]):
            mind_ssc_numpy(img[b, 0].numpy(), first, second, radius, dilation, out[b].numpy())
        return out
    return mind_ssc_torch(img, radius, dilation)


def mind_ssc_torch(img: torch.Tensor, radius: int = 2, dilation: int = 2) -> torch.Tensor:
    """:func:`mind_ssc` of an already normalised ``[B, 1, D0, D1, D2]`` float32 image in PyTorch operations (any
    device, differentiable); the CPU uses :mod:`caio.kernels.mind` instead."""
    shape = tuple(img.shape[2:])
    padded = F.pad(img, [dilation] * 6, mode="replicate")
    offsets = six_neighbourhood(dilation)
    shifted = [_shifted(padded, o, dilation, shape) for o in offsets]
    dist = box_mean(torch.cat([(shifted[i] - shifted[j]) ** 2 for i, j in ssc_pairs()], dim=1), radius)
    del shifted, padded
    variance = dist.mean(dim=1, keepdim=True)
    mean_var = variance.mean(dim=(2, 3, 4), keepdim=True)
    variance = torch.maximum(torch.minimum(variance, mean_var * 1e3), mean_var * 1e-3 + 1e-12)
    mind = torch.exp(-dist / variance)
    return mind / mind.amax(dim=1, keepdim=True)
