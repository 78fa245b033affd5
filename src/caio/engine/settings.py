"""Settings of the registration engine (:func:`caio.engine.register`): pyramids, iterations, windows, steps.

Every default was chosen by measurement on tuning sets; the measurements and their commands are in
docs/measurements.md (the section named beside each setting) and the method in docs/engine.md. The iteration counts
are upper bounds that the anytime schedule (:mod:`caio.engine.schedule`) trims when the deadline is short.
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
        iterations: iterations per level (same length as ``factors``).
        radius: LNCC window half-width in voxels (3 -> 7^3 window); one value for every level, or one per level of
            ``factors`` (coarsest first).
        squared_radius: window half-width of the squared LNCC (``"lncc2"``), one value or one per level.
        remap_factors, remap_iterations: the pyramid of ``similarity="remap"`` (as ``factors`` and ``iterations``):
            squared LNCC at 1/4 and 1/2, then LNCC on the remapped image at 1/2 and 1.
        remap_from: index (in ``remap_factors``) of the first level that registers the remapped moving image with
            LNCC; the levels before it use ``"lncc2"``. The map is fitted afresh before each such level, from the
            field reached so far (a map fitted on a misaligned pair blurs the contrast relation).
        remap_bins: moving-intensity bins of the map.
        remap_min_explained: ``similarity="cross"``: the share of the fixed image's variance the map must explain
            after the lead level (:func:`caio.engine.intensity_map.explained_variance`) to keep remapping, else
            MIND-SSC. Set between the label-drawn pairs (where remapping wins) and pairs with scanner artefacts
            (where it loses); docs/measurements.md, "Registration engine against CPU peers".
        eps: LNCC flat-window regulariser (intensities scaled to about [0, 1]).
        level: step and smoothing of every level (:class:`LevelSettings`) but the MIND-SSC ones.
        outlier_ratio: ``LevelSettings.outlier_ratio`` of the ``"lncc"`` route's levels (same-contrast pairs): the
            longest update vector counts as at most twice the 99.9th percentile, so the edge of a moving scan's field
            of view or a scalp edge no longer sets the pace of the whole field (LUMIR-like T1 pairs +0.002 Dice, 2 mm
            IXI heads +0.008). Not on the cross-contrast routes: there it cost every real-lesion case 0.02-0.12 mm
            of endpoint error (docs/measurements.md, "An update step that outliers do not set"). ``None``: off.
        steps: largest update per iteration for each level (voxels of that level), overriding ``level.step``;
            ``None`` uses ``level.step`` everywhere.
        mind_factors, mind_iterations: the MIND-SSC pyramid and its iterations. Most of them are spent at 1/4 and
            1/2, where an iteration is cheap; the full-resolution MIND-SSC iterations after the remapped level are
            what keeps real contrasts accurate (docs/measurements.md, "A remapped level between MIND-SSC levels").
        mind_radius, mind_dilation: MIND-SSC patch radius and neighbour distance (voxels of the full-resolution
            image; the descriptors are computed there once and resampled for the coarser levels).
        mind_level: step and smoothing of the MIND-SSC levels: a field smoothing of 0.75 voxel, which beat 0.5 and
            1.0 on the synthetic cross-contrast pairs (docs/measurements.md, "MIND-SSC for cross-contrast pairs").
        mind_seconds_per_voxel: cost of the descriptors of both images per voxel, twice the measured value as a
            margin: ``"mind"`` starts them only if they and a few iterations fit before the deadline, since they
            cannot be interrupted.
        mind_remap_statistic: what the map of the remapped MIND-SSC-route levels takes of the fixed intensities in
            each moving bin: ``"median"`` (it beat the mean on every tuning set) or ``"mean"``. ``similarity="remap"``
            keeps the mean: its map is fitted on a pair aligned only by squared LNCC, where the median lost
            (docs/measurements.md, "Cross-contrast settings tried after the held-out check").
        mind_remap_factors, mind_remap_iterations: levels run after the MIND-SSC ones: LNCC against the moving
            image remapped to the fixed contrast by the intensity map fitted on the MIND-SSC-aligned pair
            (:mod:`caio.engine.intensity_map`); ``()`` ends with MIND-SSC (docs/measurements.md, "Remapped
            refinement after MIND-SSC").
        mind_remapped_levels: indices (in ``mind_factors``) of levels that register LNCC against the remapped
            moving image instead of the descriptors; the MIND-SSC levels that follow go on from that field. The
            default remaps between MIND-SSC at 1/2 and at full resolution, so that the descriptors correct what
            the map gets wrong (docs/measurements.md, "A remapped level between MIND-SSC levels").
        mind_robust: Geman-McClure scale of the MIND-SSC levels' descriptor difference (per voxel, summed over the
            12 channels; :func:`caio.similarity.ssd.ssd_and_gradient`): voxels that differ by much more than it (a
            lesion seen in one contrast only) stop pulling the field; 0: plain squared differences.
        safeguard: check every level's field by a criterion it did not optimise and keep the field before it when
            the level made the pair worse by that criterion (:mod:`caio.engine.safeguard`).
        safeguard_factor: largest grid-size divisor of the grid the safeguard scores on
            (:class:`caio.engine.safeguard.AlignmentCheck`).
        safeguard_tolerance: share of the gain so far (by the safeguard's criterion) a level may lose before the
            safeguard keeps the field before it (levels of different similarities trade a few per cent of each
            other's criterion: docs/measurements.md, "The safeguard").
        mind_lead: ``similarity="mind"`` starts with the lead level (squared LNCC at the remap pyramid's first level)
            before the descriptors; ``False`` starts the MIND-SSC route from the initial field when the descriptors
            fit before the deadline (``"cross"`` always leads: it chooses its route by the lead's field).
        finest_work: the ``"lncc"`` route's finest level runs at least ``finest_work / voxels`` iterations (at most
            ``finest_max_iterations``): about the work (iterations x voxels) of its 20 iterations on a 1 mm brain
            (5.9-6.3 million voxels after the crop), so a smaller grid (a 2 mm scan: 1.3 million) gets more
            iterations in the same time. 2 mm IXI T1 pairs gained 0.009 Dice (docs/measurements.md, "More work
            on small grids"); ``None``: the configured iterations everywhere.
        finest_max_iterations: upper bound of that rule.
        finest_work_min_voxels: the rule applies to finest grids of at least this many voxels (it was measured on
            1.3 million: 2 mm heads; coarser or smaller grids keep the configured iterations), and never to a level
            configured with 0 iterations.
        min_iterations: a level that would get fewer iterations than this is skipped.
        prior_seconds_per_voxel: cost-model prior (seconds per voxel and iteration) for the first level.
        crop_margin: register inside the bounding box of the non-zero voxels of either image, grown by this many
            voxels (``-1``: the whole grid).
        warped_gradient: on the CPU, central differences of the warped image (as the PyTorch path) instead of the
            moving image's gradient at the warped point.
        cpu_kernels: on the CPU, use the fused Numba kernels (:mod:`caio.kernels`); ``False`` runs the PyTorch
            path there too.
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
    outlier_ratio: float | None = 2.0
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
    mind_lead: bool = True
    mind_robust: float = 0.0
    safeguard: bool = True
    safeguard_factor: int = 2
    safeguard_tolerance: float = 0.5
    finest_work: float | None = 1.2e8
    finest_max_iterations: int = 160
    finest_work_min_voxels: int = 500_000
    min_iterations: int = 3
    prior_seconds_per_voxel: float = 2e-7
    crop_margin: int = 8
    warped_gradient: bool = False
    cpu_kernels: bool = True

    @classmethod
    def for_lesions(cls) -> EngineConfig:
        """Settings for images with pathology seen in one contrast only (tumours, oedema, lesions): the MIND-SSC
        levels score descriptor differences with the Geman-McClure function (``mind_robust`` 0.03), no level
        registers an intensity-remapped image (a global intensity map turns a lesion into the wrong tissue, which
        LNCC then pulls), and no squared-LNCC lead level runs first (it pulls lesions too). Chosen on the tuning
        patients of ``bench/lesion_contrasts.py`` (docs/measurements.md, "The safeguard and the lesion settings");
        it lowers Dice on label-drawn contrasts, so it is not the default."""
        return cls(
            mind_robust=0.03,
            mind_remapped_levels=(),
            mind_remap_factors=(),
            mind_remap_iterations=(),
            mind_lead=False,
        )

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

    def check_windows(self, similarity: str) -> None:
        """Per-level windows and steps are given per level of ``factors``; the pyramids a registration with
        ``similarity`` also runs (``"remap"``: the remap pyramid; ``"cross"``, ``"mind"``: both it and the MIND-SSC
        pyramid, whose remapped levels read the LNCC window by index) must then have as many levels.

        Raises:
            ValueError: a per-level tuple does not fit a pyramid that ``similarity`` runs.
        """
        pyramids = {"remap": ("remap",), "cross": ("remap", "mind"), "mind": ("remap", "mind")}.get(similarity, ())
        for pyramid in pyramids:
            levels = len(self.schedule(pyramid)[0])
            fields = "remap_factors has" if pyramid == "remap" else "mind_factors + mind_remap_factors have"
            for name in ("radius", "squared_radius", "steps") if pyramid == "remap" else ("radius",):
                if levels != len(self.factors) and isinstance(getattr(self, name), tuple):
                    raise ValueError(f"{name} has one value per level of factors, but {fields} {levels}")

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
