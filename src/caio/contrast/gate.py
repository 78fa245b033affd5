"""Contrast gate: is an image pair same-contrast or cross-contrast?

The score is the **signed** local normalised cross-correlation (LNCC) of the two images,
averaged over the brain, at low resolution:

1. Brain mask = ``fixed > 0`` and ``moving > 0`` (LUMIR images are skull-stripped, background 0).
2. Both images are block-averaged by ``factor`` (4: 160x224x192 -> 40x56x48, 4 mm voxels)
   over mask voxels only (masked mean); low-resolution voxels with less than half of their
   block inside the mask are dropped; each image is then divided by its maximum.
   Block averaging is both the anti-aliasing filter and the decimation; a Gaussian
   :func:`caio.spatial.resize_image` of the full volume does the same job in ~3 s on 2 CPU
   cores instead of ~0.1 s.
3. Local statistics use a Gaussian window of ``sigma_vox`` low-resolution voxels
   (:func:`caio.spatial.gaussian_blur`), normalised by the window's brain weight, so
   background never enters a window and the brain outline (bright-on-dark in every contrast)
   does not count as agreement.
4. ``score`` = mean over brain voxels of ``cov / sqrt(var_f * var_m)``, in [-1, 1].

Same-contrast pairs, even of different subjects, correlate positively (WM/GM/CSF ordering
agrees); T1 vs T2/PD invert the GM/WM and CSF ordering and score below 0.
:func:`is_cross_contrast` is ``score < threshold``. The defaults (``factor`` 4, i.e. 4 mm
voxels; ``sigma_vox`` 1.5, i.e. a 6 mm Gaussian window; ``threshold`` 0.2) come from
``bench/calibrate_gate.py`` (``docs/gate_calibration.md``): on 121 T1-T1 / T1-other pairs
every T1-T1 pair scored >= 0.23 and every T1-T2/PD pair <= -0.10, but T1-FLAIR pairs score
from 0.0 to 0.76 (CSF is dark in both, so only the GM/WM inversion disagrees) and about
half of them are called same-contrast. Where a pair's modality codes differ, callers
should force the decision (``decide(..., force=True)``) rather than trust the score.
A score in ``[threshold, ambiguous_below)`` is called same-contrast but flagged
``ambiguous``: T1 vs another subject's FLAIR-like image scores up to 0.37 (0.40 on the
synthetic benchmark set), T1-T1 pairs of one scanner from 0.46 up; the registration engine
treats such a pair as cross-contrast (its remapping loses 0.004 Dice on a T1-T1 pair and
gains 0.08-0.10 on a FLAIR-like one).

Real FLAIR against T1 of the same patient scores 0.60-0.67 (aurora, TCGA-DU-7294 in ``bench/lesion_contrasts.py``),
inside the T1-T1 range: at 4 mm the dark CSF of both dominates every window. The **tissue score**
(:func:`tissue_score`) looks past it: the same signed LNCC at 2 mm, inside the tissue only (voxels above the
40th brain percentile in both images, where CSF no longer enters), where the GM/WM inversion of FLAIR shows. A
same-contrast call whose tissue score is below :attr:`GateConfig.tissue_below` is ``ambiguous`` too
(docs/gate_calibration.md, "Tissue score").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from caio.similarity.lncc import masked_lncc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateConfig:
    """Gate parameters (see the module docstring for how they were chosen).

    Attributes:
        factor: block size of the downsampling, in full-resolution voxels.
        sigma_vox: standard deviation of the Gaussian LNCC window, in low-resolution voxels.
        threshold: scores below it are cross-contrast.
        ambiguous_below: scores from ``threshold`` up to this are same-contrast but ``ambiguous``
            (T1 vs FLAIR-like and T1-T1 pairs both occur there).
        eps: added to each local variance (images scaled to [0, 1]); flat windows count ~0.
        tissue_factor: block size of the tissue score's downsampling (full-resolution voxels).
        tissue_quantile: the tissue is where both images exceed this quantile of their brain's values.
        tissue_below: a same-contrast call with a tissue score below this is ``ambiguous``.
    """

    factor: int = 4
    sigma_vox: float = 1.5
    threshold: float = 0.2
    ambiguous_below: float = 0.45
    eps: float = 1e-4
    tissue_factor: int = 2
    tissue_quantile: float = 0.4
    tissue_below: float = 0.14


@dataclass(frozen=True)
class GateDecision:
    """Outcome of :func:`decide`: ``score`` (NaN when it could not be computed), the decision,
    whether the decision was forced by the caller rather than taken from the score, and whether
    a same-contrast decision from the score is ``ambiguous`` (:attr:`GateConfig.ambiguous_below`, or a
    ``tissue`` score below :attr:`GateConfig.tissue_below`; NaN where it was not computed)."""

    score: float
    cross_contrast: bool
    forced: bool
    ambiguous: bool = False
    tissue: float = math.nan


def _as_volume(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``[1, 1, D0, D1, D2]`` float32 from a tensor of that shape or a ``(D0, D1, D2)`` array/tensor."""
    tensor = torch.as_tensor(image)
    if tensor.dim() == 3:
        tensor = tensor[None, None]
    if tensor.dim() != 5 or tensor.shape[:2] != (1, 1):
        raise ValueError(f"image must be [1, 1, D0, D1, D2] or (D0, D1, D2), got {tuple(tensor.shape)}")
    return tensor.float()


def _masked_block_mean(f: torch.Tensor, m: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block means ``[1, 2, ...]`` of both images over voxels inside both brains, and the
    low-resolution mask (at least half of the block inside)."""
    mask = (f > 0).logical_and_(m > 0)
    stack = torch.cat([f, m, mask.float()], dim=1)
    stack[:, :2] *= stack[:, 2:3]
    if factor > 1:
        stack = F.avg_pool3d(stack, factor, ceil_mode=True)
    weight = stack[:, 2:3]
    return stack[:, :2] / weight.clamp_min(1e-6), weight >= 0.5


def _low_resolution(
    fixed: torch.Tensor | np.ndarray, moving: torch.Tensor | np.ndarray, factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images block-averaged by ``factor`` inside both brains (:func:`_masked_block_mean`)."""
    f, m = _as_volume(fixed), _as_volume(moving)
    if f.shape != m.shape:
        raise ValueError(f"fixed {tuple(f.shape)} and moving {tuple(m.shape)} must share a grid")
    return _masked_block_mean(f, m, factor)


def _mean_lncc(low: torch.Tensor, mask: torch.Tensor, cfg: GateConfig) -> float:
    """Mean signed LNCC over ``mask`` of the two channels of ``low``, each divided by its maximum and 0 outside
    ``mask`` (windows normalised by their weight inside it)."""
    w = mask.float()
    low = low / low.amax(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6) * w  # each image in [0, 1], 0 outside
    cc = masked_lncc(low[:, :1], low[:, 1:], w, float(cfg.sigma_vox), cfg.eps)
    return float(cc[mask].mean())


def gate_score(
    fixed: torch.Tensor | np.ndarray, moving: torch.Tensor | np.ndarray, cfg: GateConfig = GateConfig()
) -> float:
    """Mean signed LNCC of ``fixed`` and ``moving`` inside the brain at low resolution.

    Args:
        fixed, moving: ``[1, 1, D0, D1, D2]`` (or ``(D0, D1, D2)``) intensities >= 0 on the
            same grid, 0 = background.
    Returns:
        Score in [-1, 1]; NaN when the two brain masks do not overlap.
    Raises:
        ValueError: the two images have different shapes.
    """
    low, low_mask = _low_resolution(fixed, moving, int(cfg.factor))
    return _mean_lncc(low, low_mask, cfg) if bool(low_mask.any()) else math.nan


def tissue_score(
    fixed: torch.Tensor | np.ndarray, moving: torch.Tensor | np.ndarray, cfg: GateConfig = GateConfig()
) -> float:
    """Mean signed LNCC inside the tissue at ``cfg.tissue_factor``: as :func:`gate_score`, restricted to the
    low-resolution voxels where both images exceed their ``cfg.tissue_quantile`` brain quantile (CSF and
    partial-volume edges, dark in T1 and FLAIR alike, left out). NaN when no such voxel exists."""
    low, low_mask = _low_resolution(fixed, moving, int(cfg.tissue_factor))
    if not bool(low_mask.any()):
        return math.nan
    tissue = low_mask.clone()
    for channel in range(2):
        values = low[:, channel : channel + 1]
        tissue &= values > torch.quantile(values[low_mask], float(cfg.tissue_quantile))
    return _mean_lncc(low, tissue, cfg) if bool(tissue.any()) else math.nan


def is_cross_contrast(score: float, cfg: GateConfig = GateConfig()) -> bool:
    """``score < cfg.threshold``; a NaN score (no brain overlap) is not called cross-contrast."""
    return bool(score < cfg.threshold) if not math.isnan(score) else False


def decide(
    fixed: torch.Tensor | np.ndarray,
    moving: torch.Tensor | np.ndarray,
    cfg: GateConfig = GateConfig(),
    force: bool | None = None,
) -> GateDecision:
    """Gate decision for a pair; ``force`` (True/False) overrides the score, which is still reported."""
    score = gate_score(fixed, moving, cfg)
    if force is not None:
        return GateDecision(score, bool(force), True)
    if math.isnan(score):
        log.warning("gate: the brain masks do not overlap; treating the pair as same-contrast")
    cross = is_cross_contrast(score, cfg)
    if cross or math.isnan(score):
        return GateDecision(score, cross, False)
    tissue = tissue_score(fixed, moving, cfg)
    ambiguous = score < cfg.ambiguous_below or tissue < cfg.tissue_below  # a NaN tissue score is not evidence
    return GateDecision(score, cross, False, ambiguous, tissue)


# ----------------------------------------------------------------------------------------
# caio gate FIXED MOVING
# ----------------------------------------------------------------------------------------
