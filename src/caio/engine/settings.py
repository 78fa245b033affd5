"""Settings of the registration engine (:func:`caio.engine.register`): pyramids, iterations, windows, steps.

Every default was chosen by measurement (README, "The registration engine"); the iteration counts are upper bounds
that the anytime schedule (:mod:`caio.engine.schedule`) trims when the deadline is short.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caio.engine.intensity_map import STATISTICS
from caio.engine.optimizer import LevelSettings


@dataclass(frozen=True)
class EngineConfig:
    """Settings of :func:`register`.

    Attributes:
        factors: pyramid levels, coarsest first, as grid-size divisors (1 = full resolution).
        iterations: iterations per level (same length as ``factors``; measured choices: README).
        radius: LNCC window half-width in voxels (3 -> 7^3 window); one value for every level, or
            one per level of ``factors`` (coarsest first).
        squared_radius: window half-width of the squared LNCC (``"lncc2"``), one value or one per level.
        remap_factors, remap_iterations: the pyramid of ``similarity="remap"`` (as ``factors`` and
            ``iterations``): squared LNCC at 1/4 and 1/2, then LNCC on the remapped image at 1/2 and 1.
        remap_from: index (in ``remap_factors``) of the first level that registers the remapped
            moving image with LNCC; the levels before it use ``"lncc2"``. The map is fitted afresh
            before each such level, from the field reached so far.
        remap_bins: moving-intensity bins of the map.
        remap_min_explained: ``similarity="cross"``: the share of the fixed image's variance the map must
            explain after the first level (:func:`caio.engine.intensity_map.explained_variance`) to be
            remapped, else MIND-SSC (LUMIR-like pairs: 0.357-0.534, synthetic with artefacts: 0.123-0.321).
        eps: LNCC flat-window regulariser (intensities scaled to about [0, 1]; 1e-4 measured best, README).
        level: step and smoothing of every level (:class:`LevelSettings`).
        steps: largest update per iteration for each level (voxels of that level), overriding
            ``level.step``; ``None`` uses ``level.step`` everywhere.
        mind_factors, mind_iterations: the MIND-SSC pyramid and its iterations (30 at 1/2 and 100
            squared-LNCC iterations before it instead of 50 and 200: -0.0015 / -0.0005 Dice on the LUMIR-like /
            synthetic cross pairs, 1.8 s less per 1 mm pair; 5 at full resolution and 15 remapped after them
            instead of 10 and 10: +0.005 / +0.002 Dice there, +0.004 on both held-out sets, same time;
            notes/measurements.md, "Faster CPU kernels and a shorter cross-contrast schedule" and "Held-out pairs
            and more remapped iterations"). With the remapped 1/2 level of ``mind_remapped_levels``: 60 and 20
            MIND-SSC iterations at 1/4 and 1/2, 10 remapped at 1/2, 12 MIND-SSC at full resolution and 5 remapped
            at the end, in the time of the schedule without it (more full-resolution MIND-SSC iterations after the
            remapped level is what keeps real contrasts accurate: 5 there cost 0.04-0.19 voxel).
        mind_radius, mind_dilation: MIND-SSC patch radius and neighbour distance (voxels of the full-resolution
            image; the descriptors are computed there once and resampled for the coarser levels).
        mind_level: step and smoothing of the MIND-SSC levels: a field smoothing of 0.75 voxels beat 0.5 (Dice
            0.5666 vs 0.5583 on 10 synthetic cross-contrast pairs; 1.0: 0.5648). ``"mind"`` first runs the
            first level of ``remap_factors`` (squared LNCC) and starts the descriptors only if they
            (``mind_seconds_per_voxel`` per voxel, both images; measured 1.3e-7 with the fused CPU passes,
            twice that as a margin) fit before the deadline.
        mind_remap_statistic: what the map of those levels takes of the fixed intensities in each moving bin:
            ``"median"`` (beat the mean on every set: LUMIR-like cross 0.6252 -> 0.6271, synthetic 0.6070 -> 0.6078,
            real SPM T2 0.83 -> 0.78 voxel, and on 9 of the 10 held-out cross pairs, the tenth 0.0001 lower;
            notes/measurements.md, "Cross-contrast settings tried after the held-out check")
            or ``"mean"``. ``similarity="remap"`` fits its map on a pair aligned only by squared LNCC and keeps the
            mean: the median lost there (3 mm test pair: Dice 0.614 -> 0.602).
        mind_remap_factors, mind_remap_iterations: levels run after the MIND-SSC ones: LNCC against the moving
            image remapped to the fixed contrast by the intensity map fitted on the MIND-SSC-aligned pair
            (:mod:`caio.engine.intensity_map`); ``()`` ends with MIND-SSC. Measured choices: notes/measurements.md,
            "Remapped refinement after MIND-SSC" and "Held-out pairs and more remapped iterations".
        mind_remapped_levels: indices (in ``mind_factors``) of levels that register LNCC against the remapped
            moving image, as the levels after them, instead of the descriptors; the MIND-SSC levels that follow
            go on from that field. Default: the second 1/2 level, between MIND-SSC at 1/2 and at full resolution
            (LUMIR-like cross 0.6276 -> 0.6420, synthetic 0.6078 -> 0.6108, real contrasts' endpoint error equal
            or lower, same time; remapped levels only after the full-resolution MIND-SSC level had cost real
            contrasts 0.10-0.33 voxel; notes/measurements.md, "A remapped level between MIND-SSC levels").
        min_iterations: a level that would get fewer iterations than this is skipped.
        prior_seconds_per_voxel: cost-model prior (seconds per voxel and iteration) for the first level.
        crop_margin: register inside the bounding box of the non-zero voxels of either image,
            grown by this many voxels (``-1``: the whole grid).
        warped_gradient: on the CPU, central differences of the warped image (as the PyTorch path)
            instead of the moving image's gradient at the warped point.
        cpu_kernels: on the CPU, use the fused Numba kernels (:mod:`caio.engine.cpu_kernels`);
            ``False`` runs the PyTorch path there too.
    """

    factors: tuple[int, ...] = (4, 2, 1)
    iterations: tuple[int, ...] = (200, 100, 20)
    radius: int | tuple[int, ...] = 3
    squared_radius: int | tuple[int, ...] = 2
    remap_factors: tuple[int, ...] = (4, 2, 2, 1)
    remap_iterations: tuple[int, ...] = (100, 60, 60, 10)
    remap_from: int = 2
    remap_bins: int = 64
    remap_min_explained: float = 0.34
    eps: float = 1e-4
    level: LevelSettings = field(default_factory=LevelSettings)
    steps: tuple[float, ...] | None = None
    mind_factors: tuple[int, ...] = (4, 2, 2, 1)
    mind_iterations: tuple[int, ...] = (60, 20, 10, 12)
    mind_radius: int = 1
    mind_dilation: int = 1
    mind_level: LevelSettings = field(default_factory=lambda: LevelSettings(sigma_field=0.75))
    mind_seconds_per_voxel: float = 2.5e-7
    mind_remap_factors: tuple[int, ...] = (1,)
    mind_remap_iterations: tuple[int, ...] = (5,)
    mind_remapped_levels: tuple[int, ...] = (2,)
    mind_remap_statistic: str = "median"
    min_iterations: int = 3
    prior_seconds_per_voxel: float = 2e-7
    crop_margin: int = 8
    warped_gradient: bool = False
    cpu_kernels: bool = True

    def __post_init__(self) -> None:
        for kind in ("lncc", "remap", "mind"):
            factors, iterations = self.schedule(kind)
            if len(factors) != len(iterations):
                raise ValueError(f"the {kind} pyramid's factors and iterations must have the same length")
            if any(f < 1 for f in factors):
                raise ValueError("pyramid factors must be >= 1")
        if self.mind_remap_statistic not in STATISTICS:
            raise ValueError(
                f"mind_remap_statistic '{self.mind_remap_statistic}' is not one of {', '.join(STATISTICS)}"
            )
        if len(self.mind_remap_factors) != len(self.mind_remap_iterations):
            raise ValueError("mind_remap_factors and mind_remap_iterations must have the same length")
        if any(not 0 <= i < len(self.mind_factors) for i in self.mind_remapped_levels):
            raise ValueError(
                f"mind_remapped_levels {self.mind_remapped_levels} must index levels of mind_factors "
                f"(0 to {len(self.mind_factors) - 1})"
            )
        for name in ("radius", "squared_radius", "steps"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != len(self.factors):
                raise ValueError(f"{name} must have one value per level of factors ({len(self.factors)})")

    def schedule(self, kind: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(factors, iterations)`` of the pyramid used for similarity ``kind``."""
        if kind == "mind":
            return self.mind_factors + self.mind_remap_factors, self.mind_iterations + self.mind_remap_iterations
        if kind in ("remap", "cross"):
            return self.remap_factors, self.remap_iterations
        return self.factors, self.iterations

    def level_radius(self, kind: str, index: int) -> int:
        """LNCC window half-width of level ``index`` for ``kind`` (``"lncc"`` or ``"lncc2"``)."""
        value = self.squared_radius if kind == "lncc2" else self.radius
        return value[index] if isinstance(value, tuple) else value
