"""Intensity remapping for cross-contrast pairs: make the moving image look like the fixed contrast.

Once a coarse registration has roughly aligned the two images, the joint histogram of the fixed
image and the warped moving image says which fixed intensity goes with each moving intensity
(tissues keep their own intensity in each contrast). The map is a statistic of the fixed intensity per
bin of moving intensity, interpolated linearly between bins: the conditional mean ``E[fixed | moving = m]``,
as in the adaptive intensity correction of the demons algorithm (Guimond, Roche, Ayache & Meunier, IEEE
TMI 2001; ``similarity="remap"``), or the conditional median, its robust form, for the remapped level
after MIND-SSC, where voxels still misaligned or mixed from two tissues then pull a bin's value less
(measured: docs/measurements.md, "Cross-contrast settings tried after the held-out check"). The remapped moving
image is then registered to the fixed one with plain LNCC, which measures a same-contrast pair better
than squared LNCC measures a cross-contrast one.

Images are ``[1, 1, D0, D1, D2]`` tensors on one grid; intensities in any range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class IntensityMap:
    """A piecewise-linear map of moving intensities to fixed ones.

    Attributes:
        top: moving intensity of the last bin; bin ``b`` sits at ``b * top / (bins - 1)``;
            brighter intensities take the last bin's value.
        values: ``[bins]`` the fixed intensity each bin maps to.
    """

    top: float
    values: torch.Tensor

    def __call__(self, moving: torch.Tensor) -> torch.Tensor:
        """``moving`` (any shape) with every intensity replaced by the map's value for it."""
        bins = self.values.numel()
        # in place where possible: at 1 mm each temporary is 27-55 MB of fresh pages
        fraction = (moving * ((bins - 1) / self.top)).clamp_(0, bins - 1)
        lower = fraction.floor().long().clamp_(max=bins - 2)
        fraction -= lower
        values = self.values.to(moving.device, moving.dtype)
        result = values[lower].mul_(1 - fraction)
        return result.add_(values[lower.add_(1)].mul_(fraction))


STATISTICS = ("median", "mean")
"""What :func:`fit_intensity_map` takes of the fixed intensities in each moving bin."""

FIXED_BINS = 256
"""Fixed-intensity bins of the joint histogram from which the conditional median is read (between 0 and the
99.9th percentile of the fixed image: a step of 0.4 % of its range)."""


def fit_intensity_map(
    fixed: torch.Tensor, warped: torch.Tensor, bins: int = 64, min_count: int = 20, statistic: str = "median"
) -> IntensityMap:
    """The conditional median (or mean) of ``fixed`` per bin of ``warped`` intensity.

    Args:
        fixed: ``[1, 1, D0, D1, D2]`` fixed image.
        warped: the moving image warped onto the fixed grid by the current field, same shape.
        bins: number of moving-intensity bins between 0 and the 99.9th percentile of ``warped``.
        min_count: bins with fewer voxels than this take the value interpolated from their
            neighbours (too few voxels for a statistic).
        statistic: ``"median"`` (read from the joint histogram with :data:`FIXED_BINS` fixed-intensity bins, to
            the centre of the bin that holds it; fixed intensities below 0 count as 0) or ``"mean"``.
    Returns:
        :class:`IntensityMap`; the identity map when ``warped`` has no positive intensity or
        fewer than two bins are populated.
    """
    if fixed.shape != warped.shape:
        raise ValueError(f"fixed {tuple(fixed.shape)} and warped {tuple(warped.shape)} differ in shape")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic '{statistic}' is not one of {', '.join(STATISTICS)}")
    f = fixed.flatten().float()
    w = warped.flatten().float()
    sample = w[:: max(1, w.numel() // 1_000_000)]  # torch.quantile sorts: a million voxels are plenty
    top = float(torch.quantile(sample, 0.999)) if w.numel() else 0.0
    if top <= 0:
        return IntensityMap(1.0, torch.linspace(0, 1, bins))
    index = (w * ((bins - 1) / top)).round().clamp(0, bins - 1).long()
    count = torch.bincount(index, minlength=bins).double()
    populated = count >= min_count
    centres = torch.linspace(0, top, bins, dtype=torch.float64, device=f.device)
    if int(populated.sum()) < 2:
        return IntensityMap(top, centres.float())
    if statistic == "mean":
        values = torch.bincount(index, weights=f.double(), minlength=bins) / count.clamp(min=1)
    else:
        values = _conditional_median(f, index, bins)
    return IntensityMap(top, _fill_between(values, populated).float())


def _conditional_median(fixed: torch.Tensor, moving_bin: torch.Tensor, bins: int) -> torch.Tensor:
    """``[bins]`` float64: the median of the flat ``fixed`` intensities of the voxels in each moving bin
    (``moving_bin``, same length), to the centre of one of :data:`FIXED_BINS` bins; 0 for an empty bin. On
    ``fixed``'s device."""
    top = float(torch.quantile(fixed[:: max(1, fixed.numel() // 1_000_000)], 0.999))
    if top <= 0:
        return torch.zeros(bins, dtype=torch.float64, device=fixed.device)
    fixed_bin = (fixed * ((FIXED_BINS - 1) / top)).round().clamp(0, FIXED_BINS - 1).long()
    joint = torch.bincount(moving_bin * FIXED_BINS + fixed_bin, minlength=bins * FIXED_BINS).view(bins, FIXED_BINS)
    cumulative = joint.cumsum(1).double()
    below_half = cumulative < 0.5 * cumulative[:, -1:]  # the median's bin is the first not below half the count
    return below_half.sum(1).clamp(max=FIXED_BINS - 1).double() * (top / (FIXED_BINS - 1))


def _fill_between(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``values`` (``[bins]``) where ``known``; elsewhere linear between the nearest known bins on either side,
    constant beyond the first and last known bins. On ``values``' device (no host round trip)."""
    bins = values.numel()
    position = torch.arange(bins, device=values.device)
    before = torch.where(known, position, -1).cummax(0).values  # nearest known bin at or below
    after = torch.where(known, position, bins).flip(0).cummin(0).values.flip(0)  # ... at or above
    below, above = before.clamp(min=0), after.clamp(max=bins - 1)
    below = torch.where(before < 0, above, below)  # before the first known bin: the first one's value
    above = torch.where(after >= bins, below, above)  # after the last: the last one's value
    span = (above - below).clamp(min=1).to(values.dtype)
    fraction = (position - below).to(values.dtype) / span
    return values[below] * (1 - fraction) + values[above] * fraction


def explained_variance(fixed: torch.Tensor, warped: torch.Tensor, bins: int = 64) -> float:
    """Share of the fixed image's variance that the fitted map explains (the correlation ratio eta^2).

    ``1 - mean((fixed - map(warped))^2) / var(fixed)`` over the voxels non-zero in both images, the map
    fitted by :func:`fit_intensity_map` on the same images. Near 1: each moving intensity says which
    fixed intensity goes with it (clean images of one anatomy); low: noise, bias fields or partial
    volumes blur the relation, and remapping then registers a poor copy of the fixed image.
    """
    mask = (fixed > 0) & (warped > 0)
    if int(mask.sum()) < 2:
        return 0.0
    values = fixed[mask].double()
    variance = float(values.var())
    if variance <= 0:
        return 0.0
    residual = values - fit_intensity_map(fixed, warped, bins, statistic="mean")(warped[mask].double())
    return 1.0 - float((residual**2).mean()) / variance
