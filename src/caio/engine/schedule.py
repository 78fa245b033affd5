"""Anytime level schedule: how many iterations of each level fit in the time left.

The engine runs coarse-to-fine. Before each level it predicts the cost of one iteration of every
remaining level from what the levels so far have cost (:class:`CostModel`; a prior before the first level),
then trims the plan so that it ends before the deadline: the **finest** level's iterations are
cut first; a level that would get fewer than ``min_iterations`` is skipped (the coarser field is
upsampled instead), then the next finest is cut, and so on. The coarsest remaining level is never
skipped while any time is left, so a short budget gives a coarse field, not the zero field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace


@dataclass
class CostModel:
    """Seconds of one pass (an iteration) on a grid of ``v`` voxels: ``seconds_per_pass + seconds_per_voxel * v``,
    learned from the levels already run on this pair.

    A pass has a cost per voxel and a fixed part (Python, thread start-up) that dominates the smallest grids: one
    number per voxel measured on the 1/4 grid over-priced the 1 mm grid 1.2-1.5 times (5.9e-8 s against 3.9e-8),
    so the finer levels were planned too few iterations. The first pass on a new grid is slower again (memory
    first touched), which :meth:`update` keeps apart as a per-level start-up cost (:meth:`startup_seconds`).

    Attributes:
        seconds_per_voxel: per-voxel part (starts at the prior).
        seconds_per_pass: fixed part of every pass (0 until two grid sizes are measured).
        startup_per_voxel: the extra cost of a level's first pass, per voxel, on the largest grid measured so far.
    """

    seconds_per_voxel: float
    seconds_per_pass: float = 0.0
    startup_per_voxel: float = 0.0
    _steady: dict[int, float] = field(default_factory=dict, repr=False)  # voxels -> seconds of a later pass

    @property
    def measured(self) -> bool:
        """Whether the estimate comes from a measurement on this pair (else it is the prior)."""
        return bool(self._steady)

    def iteration_seconds(self, voxels: int) -> float:
        """Predicted seconds of one iteration on a grid of ``voxels`` voxels."""
        return self.seconds_per_pass + self.seconds_per_voxel * voxels

    def startup_seconds(self, voxels: int) -> float:
        """Predicted extra seconds of a level's first pass on a grid of ``voxels`` voxels."""
        return self.startup_per_voxel * voxels

    def copy(self) -> CostModel:
        """An independent copy (its own measurements), e.g. to carry this pair's timings into another pyramid."""
        return replace(self, _steady=dict(self._steady))

    def update(self, seconds: float, passes: int, voxels: int, first_pass_seconds: float | None = None) -> None:
        """Take the measured cost of ``passes`` passes on ``voxels`` voxels.

        With ``first_pass_seconds`` (and at least two passes) the first pass is priced apart: the later ones give
        the per-pass cost, its excess the start-up cost. With two grid sizes measured, the per-pass cost is the line
        through the smallest and the largest grid (both parts kept non-negative); with one, it is all per voxel,
        which over-prices the finer grids (safe for a deadline).
        """
        if passes <= 0 or voxels <= 0:
            return
        steady = seconds / passes
        if first_pass_seconds is not None and passes >= 2:
            steady = (seconds - first_pass_seconds) / (passes - 1)
            if voxels >= max(self._steady, default=0):  # the largest grid's: on small ones the fixed part dominates
                self.startup_per_voxel = max(0.0, first_pass_seconds - steady) / voxels
        self._steady[voxels] = steady
        small, large = min(self._steady), max(self._steady)
        if small == large:
            self.seconds_per_voxel, self.seconds_per_pass = steady / voxels, 0.0
            return
        slope = (self._steady[large] - self._steady[small]) / (large - small)
        if slope <= 0:  # timing noise: all per voxel, from the largest grid
            self.seconds_per_voxel, self.seconds_per_pass = self._steady[large] / large, 0.0
            return
        self.seconds_per_voxel = slope
        self.seconds_per_pass = max(0.0, self._steady[small] - slope * small)


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
