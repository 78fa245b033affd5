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
    """

    factor: int = 4
    sigma_vox: float = 1.5
    threshold: float = 0.2
    ambiguous_below: float = 0.45
    eps: float = 1e-4


@dataclass(frozen=True)
class GateDecision:
    """Outcome of :func:`decide`: ``score`` (NaN when it could not be computed), the decision,
    whether the decision was forced by the caller rather than taken from the score, and whether
    a same-contrast decision from the score is ``ambiguous`` (:attr:`GateConfig.ambiguous_below`)."""

    score: float
    cross_contrast: bool
    forced: bool
    ambiguous: bool = False


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
    f, m = _as_volume(fixed), _as_volume(moving)
    if f.shape != m.shape:
        raise ValueError(f"fixed {tuple(f.shape)} and moving {tuple(m.shape)} must share a grid")
    low, low_mask = _masked_block_mean(f, m, int(cfg.factor))
    if not bool(low_mask.any()):
        return math.nan
    w = low_mask.float()
    top = low.amax(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)
    low = low / top * w  # each image in [0, 1], background 0
    cc = masked_lncc(low[:, :1], low[:, 1:], w, float(cfg.sigma_vox), cfg.eps)
    return float(cc[low_mask].mean())


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
    return GateDecision(score, cross, False, not cross and score < cfg.ambiguous_below)  # NaN: not ambiguous


# ----------------------------------------------------------------------------------------
# caio gate FIXED MOVING
# ----------------------------------------------------------------------------------------
