"""Running the levels of a route: the pyramids, the anytime plan, and one level's optimisation with its trace.

:class:`LevelRunner` holds one pair's state between levels (the field so far, the pyramids of the current route,
the cost model, the kernels) so that :func:`caio.engine.register` reads as a short driver. Every level receives the
same deadline: the plan (:func:`caio.engine.schedule.plan_iterations`) keeps back the time the later levels need,
and a level stopped before its first pass leaves the coarser field standing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from functools import partial

import torch

from caio import spatial
from caio.engine import images
from caio.engine.cpu_backend import NumbaKernels
from caio.engine.optimizer import LevelSettings, TorchKernels, optimise_level
from caio.engine.routes import Route, with_grid_work
from caio.engine.safeguard import MIN_CHECKED_SIDE, AlignmentCheck, CheckedField, judge
from caio.engine.schedule import CostModel, plan_iterations
from caio.engine.settings import EngineConfig
from caio.engine.trace import EngineTrace, LevelTrace
from caio.similarity.lncc import lncc_and_gradient
from caio.similarity.mind import MIND_CHANNELS, mind_ssc
from caio.similarity.ssd import ssd_and_gradient

log = logging.getLogger(__name__)


def make_kernels(route: Route, index: int, cfg: EngineConfig, device: torch.device) -> TorchKernels | NumbaKernels:
    """The backend of level ``index``: the fused Numba kernels on a CPU (``cfg.cpu_kernels``), PyTorch elsewhere."""
    similarity = route.similarity(index)
    radius = cfg.level_radius(similarity, index)
    if device.type == "cpu" and cfg.cpu_kernels:
        return NumbaKernels(similarity, radius, cfg.eps, cfg.warped_gradient, cfg.mind_robust)
    if similarity == "mind":
        return TorchKernels(partial(ssd_and_gradient, robust=cfg.mind_robust))
    return TorchKernels(partial(lncc_and_gradient, radius=radius, eps=cfg.eps, squared=similarity == "lncc2"))


def level_settings(route: Route, index: int, cfg: EngineConfig) -> LevelSettings:
    """Step and smoothing of level ``index``: ``cfg.mind_level`` for descriptors, ``cfg.steps`` where given (not
    on the ``"mind"`` route), else ``cfg.level``; on the ``"lncc"`` route with ``cfg.outlier_ratio``."""
    if route.similarity(index) == "mind":
        return cfg.mind_level
    settings = cfg.level
    if route.name != "mind" and cfg.steps is not None:
        settings = dataclasses.replace(settings, step=cfg.steps[index])
    if route.name == "lncc" and cfg.outlier_ratio is not None:
        settings = dataclasses.replace(settings, outlier_ratio=cfg.outlier_ratio)
    return settings


@dataclass
class Pyramid:
    """A route's images on every level's grid (MIND-SSC descriptors on the ``"mind"`` route), each level's grid
    and voxel count, and the cost model that plans its iterations."""

    fixed: dict[int, torch.Tensor]
    moving: dict[int, torch.Tensor]
    shapes: list[tuple[int, ...]]
    voxels: list[int]
    cost: CostModel


def build_pyramid(
    fixed: torch.Tensor, moving: torch.Tensor, route: Route, kernels, cfg: EngineConfig, measured: CostModel | None
) -> Pyramid:
    """Both pyramids of ``route`` (descriptors of the full-resolution images, blurred and resampled for the
    coarser levels) and the cost model: ``measured``'s estimate when it has one (levels already run on this pair),
    else the prior (times the 12 descriptor channels on the ``"mind"`` route)."""
    if route.name == "mind":
        fixed, moving = (mind_ssc(x, radius=cfg.mind_radius, dilation=cfg.mind_dilation) for x in (fixed, moving))
    fixed_levels = images.pyramid(fixed, route.factors, kernels)
    moving_levels = images.pyramid(moving, route.factors, kernels)
    shapes = [tuple(fixed_levels[k].shape[2:]) for k in route.factors]
    voxels = [int(torch.Size(s).numel()) for s in shapes]
    if measured is not None and measured.measured:
        # the fused CPU kernels cost about as much per voxel for the 12 descriptor channels as for squared LNCC,
        # so a measured cost carries over; the channel factor is only the prior's guess (docs/engine.md)
        return Pyramid(fixed_levels, moving_levels, shapes, voxels, measured.copy())
    feature_cost = float(MIND_CHANNELS) if route.name == "mind" else 1.0  # channels to warp and differentiate
    return Pyramid(fixed_levels, moving_levels, shapes, voxels, CostModel(cfg.prior_seconds_per_voxel * feature_cost))


class LevelRunner:
    """Runs the levels of one pair, coarse to fine, keeping the best field so far.

    Args:
        fixed, moving: ``[1, 1, D0, D1, D2]`` images scaled to about [0, 1], cropped to the registration box.
        init: ``[1, 3, D0, D1, D2]`` starting displacement on that grid (voxels), or ``None`` (zero).
        cfg, device, deadline: as :func:`caio.engine.register`.
        trace: receives one :class:`LevelTrace` per level.
    """

    def __init__(self, fixed, moving, init, cfg: EngineConfig, device: torch.device, deadline, trace: EngineTrace):
        self.fixed, self.moving, self.init = fixed, moving, init
        self.cfg, self.device, self.deadline, self.trace = cfg, device, deadline, trace
        self.disp: torch.Tensor | None = None if init is None else init.to(device, torch.float32)
        self.last: tuple | None = None  # kernels, images and grid of the finest level that ran (final scoring)
        self.route: Route | None = None
        self.kernels = None
        self.pyramid: Pyramid | None = None
        self.check: AlignmentCheck | None = None  # the safeguard's, made at the first level that runs
        self.start_checked: CheckedField | None = None  # the start and the best field it accepted, with scores
        self.best_checked: CheckedField | None = None
        self.guard_seconds = 0.0  # the slowest safeguard check so far: one starts only if twice that is left
        self.halted = False  # a level fell below the start by the safeguard's criterion: the route stops there

    def seconds_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def start_route(self, route: Route) -> None:
        """Switch to ``route``: its first level's kernels and its pyramids (the cost model carries over)."""
        measured = None if self.pyramid is None else self.pyramid.cost
        self.halted = False
        self.kernels = make_kernels(route, 0, self.cfg, self.device)
        self.pyramid = build_pyramid(self.fixed, self.moving, route, self.kernels, self.cfg, measured)
        self.route = with_grid_work(route, self.pyramid.voxels, self.cfg)

    def mind_fits(self) -> bool:
        """The descriptors and ``min_iterations + 2`` iterations of the coarsest MIND-SSC level fit before the
        deadline (the descriptors take seconds at 1 mm and cannot be interrupted)."""
        if self.deadline is None:
            return True
        voxels = self.fixed[0, 0].numel()
        coarse = int(voxels / self.cfg.mind_factors[0] ** 3)
        iteration = self.pyramid.cost.iteration_seconds(coarse)
        needed = self.cfg.mind_seconds_per_voxel * voxels + (self.cfg.min_iterations + 2) * MIND_CHANNELS * iteration
        return self.seconds_left() >= needed

    def run_levels(self, start: int = 0, stop: int | None = None) -> None:
        """Levels ``start`` to ``stop - 1`` (default: to the end) of the current route."""
        for index in range(start, len(self.route.factors) if stop is None else stop):
            if self.halted:
                return
            self.run_level(index)

    def _closing_seconds(self, voxels: int) -> float:
        """What a level that runs pays besides its iterations: two passes on its grid (the final field's score and
        the resampling of the result) and its first pass's start-up."""
        cost = self.pyramid.cost
        return 2 * cost.iteration_seconds(voxels) + cost.startup_seconds(voxels)

    def _plan(self, index: int) -> list[int]:
        """Iterations of levels ``index`` onwards that fit before the deadline."""
        voxels = self.pyramid.voxels[index:]
        overhead = [self._closing_seconds(v) for v in voxels]
        wanted = self.route.iterations[index:]
        cost, minimum = self.pyramid.cost, self.cfg.min_iterations
        return plan_iterations(wanted, voxels, self.seconds_left(), cost, minimum, overhead)

    def _level_deadline(self, index: int, plan: list[int]) -> float | None:
        """This level stops in time for its own two closing passes and for the later levels' planned iterations,
        closing passes and start-up (its own start-up is paid by its first pass, inside the level)."""
        if self.deadline is None:
            return None
        cost, voxels = self.pyramid.cost, self.pyramid.voxels
        later = zip(plan[1:], voxels[index + 1 :])
        reserve = 2 * cost.iteration_seconds(voxels[index]) + sum(
            n * cost.iteration_seconds(v) + self._closing_seconds(v) for n, v in later if n > 0
        )
        return self.deadline - reserve

    def _level_images(self, index: int, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed and moving images of level ``index``; on a remapped level the moving image remapped on the
        field ``current`` (and, on the ``"mind"`` route, the fixed image itself instead of its descriptors)."""
        route, factor = self.route, self.route.factors[index]
        fixed_image, moving_image = self.pyramid.fixed.get(factor), self.pyramid.moving.get(factor)
        if not route.remapped(index):
            return fixed_image, moving_image
        statistic = self.cfg.mind_remap_statistic if route.name == "mind" else "mean"
        moving_image = images.remapped_moving(
            self.fixed, self.moving, current, factor, self.cfg.remap_bins, self.kernels, statistic
        )
        if route.name == "mind":
            fixed_image = images.pyramid(self.fixed, (factor,), self.kernels)[factor]
            if route.remapped_from(index):  # no descriptor level left: drop them (0.9 GB at 1 mm)
                self.pyramid.fixed, self.pyramid.moving, self.last = {}, {}, None
        return fixed_image, moving_image

    def run_level(self, index: int) -> None:
        """Plan, then optimise level ``index`` within its share of the deadline; record its trace."""
        route, factor, shape = self.route, self.route.factors[index], self.pyramid.shapes[index]
        similarity = route.similarity(index)
        plan = self._plan(index)
        if plan[0] == 0:
            self.trace.levels.append(LevelTrace(factor, shape, 0, 0, None, None, 0.0, similarity))
            return
        level_start = time.monotonic()
        current = self._start_field(shape)
        if index > 0 and (similarity != "mind" or route.similarity(index - 1) != "mind"):
            self.kernels = make_kernels(route, index, self.cfg, self.device)  # the window (or similarity) may change
        fixed_image, moving_image = self._level_images(index, current)
        # the plan decides which levels run and what the later ones reserve; the route's last level may do more than
        # planned, up to its configured iterations, within its deadline (a pessimistic cost estimate would leave
        # time idle otherwise); earlier levels keep to the plan, or they take the finer levels' time
        iterations = route.iterations[index] if index == len(route.factors) - 1 else plan[0]
        settings = level_settings(route, index, self.cfg)
        deadline = self._level_deadline(index, plan)
        result = optimise_level(fixed_image, moving_image, current, self.kernels, iterations, settings, deadline)
        seconds = time.monotonic() - level_start
        if result.passes == 0:  # stopped before its first pass: the coarser field stands
            self.trace.levels.append(LevelTrace(factor, shape, plan[0], 0, None, None, seconds, similarity))
            self.trace.stopped_by_deadline = True
            return
        self.pyramid.cost.update(result.seconds, result.passes, self.pyramid.voxels[index], result.first_pass_seconds)
        self.disp = result.displacement
        self.trace.levels.append(
            LevelTrace(
                factor,
                shape,
                plan[0],
                result.iterations,
                result.similarity_start,
                result.similarity_best,
                time.monotonic() - level_start,
                similarity,
            )
        )
        self.trace.similarity_after = result.similarity_best
        self.last = (self.kernels, fixed_image, moving_image, shape)
        if self.cfg.safeguard and min(shape) >= MIN_CHECKED_SIDE and self.seconds_left() > 2 * self.guard_seconds:
            self._guard(f"level 1/{factor} {similarity}")
        self.trace.stopped_by_deadline |= result.stopped_by_deadline
        log.debug(
            "level 1/%d %s: %d/%d iterations, similarity %.4f -> %.4f, %.1f s",
            factor,
            shape,
            result.iterations,
            plan[0],
            result.similarity_start,
            result.similarity_best,
            result.seconds,
        )

    def _guard(self, label: str) -> None:
        """Score the level's field by the safeguard's criterion (:class:`caio.engine.safeguard.AlignmentCheck`);
        keep the field before the level (or the start) when :func:`caio.engine.safeguard.judge` says the level
        made the pair worse, and stop the route when it left the pair worse than the start."""
        started = time.monotonic()
        if self.check is None:
            self.check = AlignmentCheck(self.fixed, self.moving, self.cfg.safeguard_factor, self.kernels)
            self.start_checked = self.best_checked = CheckedField(self.check.score(self.init), self.init, "the start")
        new = CheckedField(self.check.score(self.disp), self.disp, label)
        verdict = judge(self.start_checked, self.best_checked, new, self.cfg.safeguard_tolerance)
        self.trace.checks.append(dict(label=label, score=new.score, kept=verdict.keep))
        self.guard_seconds = max(self.guard_seconds, time.monotonic() - started)
        if verdict.keep:
            self.best_checked = max(self.best_checked, new, key=lambda checked: checked.score)
            return
        # LNCC below the start: the gate's same-contrast call is suspect, and MIND-SSC is the way out (the driver's
        # reroute); other routes have no such alternative and go on from the kept field
        self.halted = verdict.below_start and self.route.name == "lncc"
        note = verdict.note + ("; the route stops (its similarity misleads on this pair)" if self.halted else "")
        self.trace.safeguard.append(note)
        log.warning("safeguard: %s", note)
        fallback = verdict.fallback.disp
        self.disp = fallback if fallback is not None else torch.zeros_like(self.disp)
        self.trace.similarity_after = None  # the kept field was not scored by this level's similarity

    def _start_field(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The field so far on ``shape`` (zero before any level ran and without ``init``)."""
        if self.disp is None:
            return torch.zeros((1, 3, *shape), device=self.device)
        return spatial.resize_displacement(self.disp, shape)

    def result(self) -> torch.Tensor:
        """The field to return on the cropped grid: the best one, or the starting field when nothing beat it (e.g.
        one iteration under a tight deadline), scored on the finest grid that ran."""
        crop_shape = tuple(self.fixed.shape[2:])
        if self.disp is None:
            self.trace.stopped_by_deadline = True
            return torch.zeros((1, 3, *crop_shape), device=self.device)
        disp = self.disp
        if self.last is not None:
            kernels, fixed_image, moving_image, shape = self.last
            start_field = (
                torch.zeros((1, 3, *shape), device=self.device)
                if self.init is None
                else spatial.resize_displacement(self.init, shape)
            )
            self.trace.similarity_before = kernels.similarity_field(fixed_image, moving_image, start_field)[0]
            if self.trace.similarity_after is None:  # a field the safeguard went back to: score it here too
                field = spatial.resize_displacement(disp, shape)
                self.trace.similarity_after = kernels.similarity_field(fixed_image, moving_image, field)[0]
            if self.trace.similarity_before >= self.trace.similarity_after:
                disp, self.trace.similarity_after = start_field, self.trace.similarity_before
        return spatial.resize_displacement(disp, crop_shape)
