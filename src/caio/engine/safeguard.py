"""The safeguard: each level's field checked by a criterion the level did not optimise.

A level can make a pair worse while improving its own similarity: LNCC on a pair whose contrasts differ (an
inverted contrast, or a FLAIR the contrast gate took for a T1) pulls edges onto the wrong edges. So after every
level the engine scores the field by a second criterion (:class:`AlignmentCheck`) and keeps the field it had before
when the level lost more than ``tolerance`` of what the levels before it had gained; an LNCC level that left the
pair worse than the start also stops the route (LNCC misleads on this pair; :func:`caio.engine.register` may then
register again with MIND-SSC). What the safeguard did is in the trace (:class:`caio.engine.trace.EngineTrace`
``safeguard``); when the field returned is one it fell back to (``EngineTrace.distrusted``), the pipeline and ``caio
register`` report the pair as degraded / flagged.

The criterion is the agreement of MIND-SSC descriptors (minus their mean squared difference; radius 1, dilation 1)
on the grid of pyramid factor ``factor`` (half resolution by default: a fraction of a second at 1 mm), inside the
fixed image's foreground. It does not care which way the contrasts run. It is a check against gross failures, not
a guarantee: on real T1 <- FLAIR pairs LNCC levels raised it while moving the field away from the truth, and on the
MIND-SSC route it is the optimised family at another scale. Normalised mutual information was tried and rejected:
squared-LNCC and remapped levels raise it while moving the field away from the truth (docs/measurements.md,
"The safeguard").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from caio import spatial
from caio.engine import images
from caio.engine.cpu_backend import NumbaKernels
from caio.engine.optimizer import TorchKernels
from caio.kernels.fields import masked_warped_ssd
from caio.similarity.mind import mind_ssc

NOISE = 0.01
"""Losses of agreement smaller than this are not counted: interpolation alone moves it by up to 0.005 on a pair
aligned from the start, while the failures it is there for lose 0.016-0.5 (docs/measurements.md, "The
safeguard and the lesion settings")."""

MIN_CHECK_GRID_SIDE = 48
"""The check's grid is coarsened only while it keeps this many voxels along every axis: coarser, MIND-SSC sees too
little anatomy to judge."""

MIN_CHECKED_SIDE = 24
"""Levels on grids with fewer voxels than this along any axis are not checked: MIND-SSC sees too little anatomy
there to judge (the 1/4 and 1/2 levels of small test volumes; at 1 mm every level is checked)."""


@dataclass
class CheckedField:
    """A field the safeguard accepted: its score, the field (voxels of its own grid) and where it came from."""

    score: float
    disp: torch.Tensor | None
    label: str


class AlignmentCheck:
    """Scores displacement fields of one pair by MIND-SSC agreement on a coarse grid.

    Args:
        fixed, moving: ``[1, 1, D0, D1, D2]`` images of the pair (the engine's cropped, scaled ones).
        max_factor: largest grid-size divisor of the grid the check runs on; smaller where that grid would have
            fewer than :data:`MIN_CHECK_GRID_SIDE` voxels along an axis.
        kernels: the engine's backend (:func:`caio.engine.levels.make_kernels`): the images are brought to the
            check's grid as the engine's pyramid brings them (:func:`caio.engine.images.pyramid`; on a CPU 0.05
            instead of 0.6 s per 1 mm image), and with the CPU backend (:class:`NumbaKernels`) each score is one
            fused pass (:func:`caio.kernels.fields.masked_warped_ssd`: the same number without a warped copy of
            the 12 channels); ``None``: :func:`caio.spatial.resize_image` and PyTorch scores.
    """

    def __init__(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        max_factor: int = 2,
        kernels: TorchKernels | NumbaKernels | None = None,
    ) -> None:
        factor = max(1, min(max_factor, min(fixed.shape[2:]) // MIN_CHECK_GRID_SIDE))
        self.shape = spatial.scaled_shape(fixed.shape[2:], factor)
        if kernels is None:
            fixed, moving = (spatial.resize_image(x.float(), self.shape) for x in (fixed, moving))
        else:
            fixed, moving = (images.pyramid(x.float(), (factor,), kernels)[factor] for x in (fixed, moving))
        self.mask = fixed[0, 0] > 0.02 * float(fixed.max())
        self.fixed, self.moving = (mind_ssc(x, radius=1, dilation=1) for x in (fixed, moving))
        self.fused = isinstance(kernels, NumbaKernels)

    def score(self, disp: torch.Tensor | None) -> float:
        """Minus the mean squared descriptor difference inside the fixed foreground of the moving image warped by
        ``disp`` (``[1, 3, ...]`` voxels of any grid of the pair; ``None``: no displacement); higher is better."""
        warped = self.moving
        if disp is not None:
            disp = spatial.resize_displacement(disp.float(), self.shape)
            if self.fused:
                arrays = (np.ascontiguousarray(x[0].numpy(), dtype=np.float32) for x in (self.fixed, self.moving, disp))
                return -float(masked_warped_ssd(*arrays, self.mask.numpy()))
            warped = spatial.warp(self.moving, disp)
        return -float((self.fixed - warped).square().sum(dim=1)[0][self.mask].mean())


@dataclass(frozen=True)
class Verdict:
    """The safeguard's decision on a level: keep its field (``keep``) or go back to ``fallback``; ``below_start``:
    the level left the pair worse than the start, so its similarity itself is misleading on this pair and the
    route's later levels (which optimise it too) should not run."""

    keep: bool
    fallback: CheckedField | None = None
    note: str = ""
    below_start: bool = False


def judge(start: CheckedField, best: CheckedField, new: CheckedField, tolerance: float) -> Verdict:
    """Keep ``new`` unless it lost more than ``tolerance`` of the gain ``best`` had over ``start`` plus
    :data:`NOISE`, or fell more than :data:`NOISE` below ``start``; then fall back to ``best`` (``start`` itself
    when no level gained). ``best`` never scores below ``start``: it starts as ``start`` and is replaced only by
    better fields."""
    gain = max(best.score - start.score, 0.0)
    if new.score >= best.score - tolerance * gain - NOISE and new.score >= start.score - NOISE:
        return Verdict(True)
    note = f"{new.label} lowered MIND-SSC agreement {best.score:.4f} -> {new.score:.4f}; kept {best.label}"
    return Verdict(False, best, note, new.score < start.score)
