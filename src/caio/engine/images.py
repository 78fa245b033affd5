"""Images for the engine: intensity scaling, the foreground crop and its undoing, the pyramid, remapping.

Images are ``[1, C, D0, D1, D2]`` tensors; displacements ``[1, 3, D0, D1, D2]`` in voxels
(:mod:`caio.spatial` convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caio import spatial
from caio.engine.intensity_map import fit_intensity_map


def scale_intensity(image: torch.Tensor) -> torch.Tensor:
    """Divide by the 99.5th percentile of the non-zero voxels (robust to bright outliers),
    estimated on every 3rd voxel per axis."""
    values = image[..., ::3, ::3, ::3].flatten()
    values = values[values > 0]
    if values.numel() == 0:
        return image
    top = float(torch.quantile(values.float(), 0.995))
    return image / top if top > 0 else image


def foreground_box(fixed: torch.Tensor, moving: torch.Tensor, margin: int) -> tuple[slice, slice, slice]:
    """Bounding box of the voxels that are non-zero in either image, grown by ``margin`` voxels.

    Skull-stripped brains fill about half of the LUMIR grid, so registering inside this box
    halves the work; the background outside it carries no similarity signal.
    """
    brightest = torch.maximum(fixed[0, 0], moving[0, 0])
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(brightest.amax(dim=others) > 0).flatten()
        n = brightest.shape[axis]
        if hits.numel() == 0:
            box.append(slice(0, n))
            continue
        box.append(slice(max(0, int(hits[0]) - margin), min(n, int(hits[-1]) + 1 + margin)))
    return box[0], box[1], box[2]


def uncrop(disp: torch.Tensor, box: tuple[slice, slice, slice], shape: tuple[int, ...]) -> torch.Tensor:
    """Put a field computed inside ``box`` back onto the full grid, extending its edge values."""
    pad = []
    for axis in (2, 1, 0):
        pad += [box[axis].start, shape[axis] - box[axis].stop]
    return F.pad(disp, pad, mode="replicate") if any(pad) else disp


def pyramid(image: torch.Tensor, factors: tuple[int, ...], kernels) -> dict[int, torch.Tensor]:
    """Images on each level's grid, each made from the next finer one: a Gaussian blur of
    ``sigma = 0.5 * step`` voxels (the step between the two grids, by ``kernels``, the fast
    path on the CPU), then trilinear resampling (:func:`caio.spatial.resize_image`)."""
    out: dict[int, torch.Tensor] = {1: image}
    current, current_factor = image, 1
    for factor in sorted(set(factors)):
        if factor == 1:
            continue
        shape = spatial.scaled_shape(image.shape[2:], factor)
        blurred = kernels.smooth(current, 0.5 * factor / current_factor)
        current = spatial.resize_image(blurred, shape, antialias=False)
        current_factor = factor
        out[factor] = current
    return out


def remapped_moving(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    disp: torch.Tensor,
    factor: int,
    bins: int,
    kernels,
    statistic: str = "median",
) -> torch.Tensor:
    """The moving image remapped to the fixed contrast (:mod:`caio.engine.intensity_map`, ``statistic`` per bin), on
    the grid of pyramid level ``factor``: the map is fitted at full resolution against ``moving`` warped by ``disp``
    (a field on the level's grid) and applied before the level's blur and resampling, so that partial-volume
    voxels are mixed from mapped intensities. ``kernels`` (the level's backend) warps and blurs."""
    full = spatial.resize_displacement(disp, tuple(fixed.shape[2:]))
    mapped = fit_intensity_map(fixed, kernels.warp(moving, full), bins, statistic=statistic)(moving)
    return pyramid(mapped, (factor,), kernels)[factor]
