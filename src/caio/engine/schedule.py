"""Anytime level schedule: how many iterations of each level fit in the time left.

The engine runs coarse-to-fine. Before each level it predicts the cost of one iteration of every
remaining level from the cost per voxel measured so far (or a prior before the first level),
then trims the plan so that it ends before the deadline: the **finest** level's iterations are
cut first; a level that would get fewer than ``min_iterations`` is skipped (the coarser field is
upsampled instead), then the next finest is cut, and so on. The coarsest remaining level is never
skipped while any time is left, so a short budget gives a coarse field, not the zero field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class CostModel:
    """Seconds per iteration per voxel, learned from the levels already run.

    Attributes:
        seconds_per_voxel: current estimate (starts at the prior).
        measured: whether it comes from a measurement on this pair.
    """

    seconds_per_voxel: float
    measured: bool = False

    def iteration_seconds(self, voxels: int) -> float:
        """Predicted seconds of one iteration on a grid of ``voxels`` voxels."""
        return self.seconds_per_voxel * voxels

    def update(self, seconds: float, iterations: int, voxels: int) -> None:
        """Take the measured cost of ``iterations`` iterations on ``voxels`` voxels.

        Smaller grids have a higher per-voxel overhead, so the estimate only grows from a
        measurement on a coarser level, never shrinks below it.
        """
        if iterations <= 0 or voxels <= 0:
            return
        per_voxel = seconds / (iterations * voxels)
        self.seconds_per_voxel = per_voxel if not self.measured else max(per_voxel, 0.8 * self.seconds_per_voxel)
        self.measured = True


def plan_iterations(
    wanted: Sequence[int],
    voxels: Sequence[int],
    seconds_left: float,
    cost: CostModel,
    min_iterations: int = 3,
    fixed_seconds: Sequence[float] | None = None,
) -> list[int]:
    """Iterations per remaining level (coarse to fine) that fit in ``seconds_left``.

    Args:
        wanted: configured iterations per remaining level, coarsest first.
        voxels: voxels of each remaining level's grid.
        seconds_left: time until the deadline.
        cost: the per-voxel cost model.
        min_iterations: a level planned for fewer iterations than this (but more than zero
            wanted) is skipped, except the first (coarsest) remaining level.
        fixed_seconds: per-level set-up cost (resizing, features) paid if the level runs.
    Returns:
        Planned iterations per level (``0`` = skip the level).
    """
    fixed = list(fixed_seconds) if fixed_seconds is not None else [0.0] * len(wanted)
    plan = list(wanted)

    def total(p: list[int]) -> float:
        return sum(n * cost.iteration_seconds(v) + (f if n > 0 else 0.0) for n, v, f in zip(p, voxels, fixed))

    for level in reversed(range(len(plan))):  # cut the finest level first
        if total(plan) <= seconds_left:
            break
        others = total(plan[:level] + [0] + plan[level + 1 :])
        room = seconds_left - others - fixed[level]
        n = max(0, math.floor(room / max(cost.iteration_seconds(voxels[level]), 1e-12)))
        n = min(n, plan[level])
        plan[level] = n if (n >= min_iterations or level == 0) else 0
    return plan
