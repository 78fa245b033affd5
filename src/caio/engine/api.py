"""``caio.register``: the tensor-level registration engine.

Multi-resolution, anytime, greedy diffeomorphic optimisation (:mod:`caio.engine.optimizer`) of
LNCC (same contrast), of squared LNCC followed by LNCC against the moving image remapped to the
fixed contrast (cross contrast, :mod:`caio.engine.intensity_map`), or of the squared difference of
MIND-SSC descriptors (with levels of LNCC against the moving image remapped on the MIND-SSC-aligned pair
between and after them), coarse to fine over an image pyramid (:mod:`caio.engine.images`). Every
level yields a valid field; the deadline is checked every iteration, and the schedule
(:mod:`caio.engine.schedule`) trims the finest level's iterations first when time is short.

Example::

    import caio, torch
    fixed = torch.rand(1, 1, 64, 64, 64) * 255
    moving = torch.roll(fixed, 2, dims=2)
    disp, trace = caio.register(fixed, moving, deadline=None)
    warped = caio.spatial.warp(moving, disp)        # warped(x) = moving(x + disp(x))
"""

from __future__ import annotations

import dataclasses
import logging
import time
from functools import partial

import torch

from caio import spatial
from caio.contrast.mind import MIND_CHANNELS, mind_ssc
from caio.engine import cpu_filters, images
from caio.engine.cpu_backend import NumbaKernels
from caio.engine.intensity_map import explained_variance
from caio.engine.optimizer import TorchKernels, optimise_level
from caio.engine.schedule import CostModel, plan_iterations
from caio.engine.settings import EngineConfig
from caio.engine.similarity import lncc_and_gradient, ssd_and_gradient
from caio.engine.trace import EngineTrace, LevelTrace

log = logging.getLogger(__name__)

SIMILARITIES = ("auto", "lncc", "lncc2", "remap", "mind", "cross")
"""``lncc``: local normalised cross-correlation (same contrast); ``lncc2``: its square (any contrast);
``remap``: ``lncc2`` on the coarse levels, then LNCC against the moving image remapped to the fixed
contrast (:mod:`caio.engine.intensity_map`); ``mind``: MIND-SSC descriptors' squared difference, with levels
(``EngineConfig.mind_remapped_levels``, ``mind_remap_factors``) of LNCC against the moving image remapped with the
map fitted on the field reached so far;
``cross``: ``remap``'s first level, then ``remap`` if the intensity map explains at least
``EngineConfig.remap_min_explained`` of the fixed image's variance, ``mind`` (from that first field) if not."""
SAME_CONTRAST_SIMILARITY = "lncc"
CROSS_CONTRAST_SIMILARITY = "mind"
"""What ``similarity="auto"`` (and the pipeline) use for a cross-contrast pair: MIND-SSC beat remapping on real
contrasts (known warps) and on synthetic pairs with scanner artefacts; remapping only on label-drawn ones, and one
remapped full-resolution level after MIND-SSC helps those and moves real contrasts' endpoint error by at most 0.04
voxel (README, "The registration engine"; notes/measurements.md, "Remapped refinement after MIND-SSC")."""


def resolve_similarity(similarity: str, fixed: torch.Tensor, moving: torch.Tensor) -> str:
    """``"auto"``: the contrast gate (:mod:`caio.contrast.gate`) picks :data:`CROSS_CONTRAST_SIMILARITY`
    for a cross-contrast or ambiguous pair and :data:`SAME_CONTRAST_SIMILARITY` otherwise; other
    values are returned unchanged."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity '{similarity}' is not one of {', '.join(SIMILARITIES)}")
    if similarity != "auto":
        return similarity
    from caio.contrast.gate import GateConfig, decide

    decision = decide(fixed, moving, GateConfig())
    return similarity_for_contrast(decision.cross_contrast, decision.ambiguous)


def similarity_for_contrast(cross_contrast: bool, ambiguous: bool = False) -> str:
    """The engine similarity for a pair the gate called cross-contrast or not: an ``ambiguous``
    same-contrast call (:class:`caio.contrast.gate.GateDecision`) counts as cross-contrast."""
    return CROSS_CONTRAST_SIMILARITY if cross_contrast or ambiguous else SAME_CONTRAST_SIMILARITY


def warm_up() -> float:
    """Load (or compile, on a machine's first run) the CPU kernels by registering a tiny pair.

    Returns:
        Seconds spent, so that callers can report it as one-off loading time.
    """
    start = time.monotonic()
    image = torch.zeros((1, 1, 12, 12, 12))
    image[..., 3:9, 3:9, 3:9] = 1.0
    config = EngineConfig(
        factors=(1,), iterations=(1,), mind_factors=(1,), mind_iterations=(1,), mind_remapped_levels=(), crop_margin=-1
    )
    for kind in ("lncc", "mind"):
        register(image, image, similarity=kind, device="cpu", config=config)
    cpu_filters.compile_streaming()  # 1 mm volumes only: else the first full-size pair would compile it on its clock
    return time.monotonic() - start


def register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    similarity: str = "auto",
    init: torch.Tensor | None = None,
    deadline: float | None = None,
    device: torch.device | str | None = None,
    config: EngineConfig | None = None,
) -> tuple[torch.Tensor, EngineTrace]:
    """Deformably register ``moving`` to ``fixed``.

    Args:
        fixed: ``[1, 1, D0, D1, D2]`` image (any intensity range; scaled internally).
        moving: ``[1, 1, D0, D1, D2]`` image on the same grid (affinely aligned).
        similarity: one of :data:`SIMILARITIES` (``"auto"``: the contrast gate picks ``"lncc"`` or
            :data:`CROSS_CONTRAST_SIMILARITY`).
        init: optional ``[1, 3, D0, D1, D2]`` starting displacement in voxels (e.g. VFA's).
        deadline: absolute ``time.monotonic()`` by which the result is returned (the best
            field so far); ``None``: run every configured iteration.
        device: where to compute (default: ``fixed``'s device).
        config: :class:`EngineConfig`.
    Returns:
        ``(disp, trace)``: ``[1, 3, D0, D1, D2]`` float32 displacement in voxels on the fixed grid
        (``warped(x) = moving(x + disp(x))``, :mod:`caio.spatial`) and an :class:`EngineTrace`.
    """
    start = time.monotonic()
    cfg = config or EngineConfig()
    spatial.check_image_pair(fixed, moving, finite=True)
    device = torch.device(device) if device is not None else fixed.device
    full_shape = tuple(fixed.shape[2:])
    fixed = images.scale_intensity(fixed.to(device, torch.float32))
    moving = images.scale_intensity(moving.to(device, torch.float32))
    kind = resolve_similarity(similarity, fixed, moving)
    if cfg.crop_margin >= 0:
        box = images.foreground_box(fixed, moving, cfg.crop_margin)
    else:
        box = (slice(0, full_shape[0]), slice(0, full_shape[1]), slice(0, full_shape[2]))
    fixed, moving = fixed[(..., *box)].contiguous(), moving[(..., *box)].contiguous()
    if init is not None:
        init = init[(..., *box)]
    crop_shape = tuple(fixed.shape[2:])
    trace = EngineTrace(similarity=kind)
    factors, wanted = cfg.schedule("remap" if kind == "mind" else kind)
    other_pyramids = {"remap": ("remap",), "cross": ("remap", "mind"), "mind": ("remap", "mind")}.get(kind, ())
    for pyramid in other_pyramids:  # per-level values are indexed by these pyramids' levels too
        levels = len(cfg.schedule(pyramid)[0])
        fields = "remap_factors has" if pyramid == "remap" else "mind_factors + mind_remap_factors have"
        # the MIND-SSC pyramid's remapped levels read the LNCC window by index; its other values are its own
        for name in ("radius", "squared_radius", "steps") if pyramid == "remap" else ("radius",):
            if levels != len(cfg.factors) and isinstance(getattr(cfg, name), tuple):
                raise ValueError(f"{name} has one value per level of factors, but {fields} {levels}")
    # "mind" and "cross" start with remap's first level (squared LNCC, cheap: a coarse field before the descriptors)
    route = "remap" if kind in ("cross", "mind") else kind

    def level_kind(index: int) -> str:
        """``"lncc"`` on a remapped level (``remapped(index)``) is LNCC against the remapped moving image."""
        if remapped(index):
            return "lncc"
        return "lncc2" if route == "remap" else route

    def remapped(index: int) -> bool:
        if route == "mind":  # the levels after the MIND-SSC ones, and those of them configured to be remapped
            return index >= len(cfg.mind_factors) or index in cfg.mind_remapped_levels
        return route == "remap" and index >= cfg.remap_from

    def make_kernels(index: int) -> TorchKernels | NumbaKernels:
        similarity, radius = level_kind(index), cfg.level_radius(level_kind(index), index)
        if device.type == "cpu" and cfg.cpu_kernels:
            return NumbaKernels(similarity, radius, cfg.eps, cfg.warped_gradient)
        if similarity == "mind":
            return TorchKernels(ssd_and_gradient)
        return TorchKernels(partial(lncc_and_gradient, radius=radius, eps=cfg.eps, squared=similarity == "lncc2"))

    def build_levels(measured: CostModel | None = None) -> tuple[dict, dict, list, list, CostModel]:
        """Both pyramids for ``route`` (MIND-SSC: descriptors of the full-resolution images, blurred and
        resampled for the coarser levels), each level's grid and voxel count, and the cost model: ``measured``'s
        estimate when it has one (the levels already run on this pair), else the prior."""
        f, m = fixed, moving
        if route == "mind":
            f, m = (mind_ssc(image, radius=cfg.mind_radius, dilation=cfg.mind_dilation) for image in (f, m))
        f_levels, m_levels = images.pyramid(f, factors, kernels), images.pyramid(m, factors, kernels)
        level_shapes = [tuple(f_levels[k].shape[2:]) for k in factors]
        counts = [int(torch.Size(s).numel()) for s in level_shapes]
        if measured is not None and measured.measured:
            # the fused CPU kernels cost about as much per voxel for the 12 descriptor channels as for squared LNCC
            # (4-6e-8 s on a 1 mm pair at every level); the prior of 12 times LNCC's had cut the first MIND-SSC level
            # to 27 of its 100 iterations at a 10 s budget and to 70 at 20 s, when all of them fitted
            return f_levels, m_levels, level_shapes, counts, measured.copy()
        feature_cost = float(MIND_CHANNELS) if route == "mind" else 1.0  # channels to warp and differentiate
        return f_levels, m_levels, level_shapes, counts, CostModel(cfg.prior_seconds_per_voxel * feature_cost)

    kernels = make_kernels(0)
    fixed_levels, moving_levels, shapes, voxels, cost = build_levels()

    disp = None if init is None else init.to(device, torch.float32)
    last = None
    index = -1
    while index + 1 < len(factors):
        index += 1
        factor = factors[index]
        if kind in ("cross", "mind") and route == "remap" and index == 1 and (disp is not None or kind == "mind"):
            if kind == "cross":
                full = spatial.resize_displacement(disp, crop_shape)
                trace.explained = explained_variance(fixed, spatial.warp(moving, full), cfg.remap_bins)
            if kind == "mind" or trace.explained < cfg.remap_min_explained:  # MIND-SSC from here on
                # the descriptors take seconds at 1 mm and cannot be interrupted: start them only if they and a few
                # iterations of the coarsest MIND level fit before the deadline, else go on with squared LNCC
                coarse = fixed[0, 0].numel() / cfg.mind_factors[0] ** 3
                needed = cfg.mind_seconds_per_voxel * fixed[0, 0].numel() + (cfg.min_iterations + 2) * MIND_CHANNELS * (
                    cost.iteration_seconds(int(coarse))
                )
                route = "lncc2" if deadline is not None and deadline - time.monotonic() < needed else "mind"
            if route == "mind":
                factors, wanted = cfg.schedule("mind")
                kernels = make_kernels(0)
                fixed_levels, moving_levels, shapes, voxels, cost = build_levels(cost)
                index, factor = 0, factors[0]
        seconds_left = float("inf") if deadline is None else deadline - time.monotonic()
        # every level that runs also pays two passes on its grid (the final field's score and the resampling of
        # the result; one was not enough: 10 % over a 10 s budget) and its first pass's start-up
        overhead = [2 * cost.iteration_seconds(v) + cost.startup_seconds(v) for v in voxels[index:]]
        plan = plan_iterations(wanted[index:], voxels[index:], seconds_left, cost, cfg.min_iterations, overhead)
        shape = shapes[index]
        if plan[0] == 0:
            trace.levels.append(LevelTrace(factor, shape, 0, 0, None, None, 0.0, level_kind(index)))
            continue
        level_start = time.monotonic()
        current = (
            torch.zeros((1, 3, *shape), device=device) if disp is None else spatial.resize_displacement(disp, shape)
        )
        f_img, m_img = fixed_levels.get(factor), moving_levels.get(factor)
        if index > 0 and (level_kind(index) != "mind" or level_kind(index - 1) != "mind"):
            kernels = make_kernels(index)  # the window (and the similarity) may change per level
        if remapped(index):
            statistic = cfg.mind_remap_statistic if route == "mind" else "mean"
            m_img = images.remapped_moving(fixed, moving, current, factor, cfg.remap_bins, kernels, statistic)
            if route == "mind":  # the fixed image itself, not its descriptors
                f_img = images.pyramid(fixed, (factor,), kernels)[factor]
                if all(remapped(later) for later in range(index + 1, len(factors))):
                    fixed_levels, moving_levels, last = {}, {}, None  # no MIND-SSC level left: drop (0.9 GB at 1 mm)
        # this level stops in time for its own two closing passes and for the later levels' planned iterations,
        # closing passes and start-up (its own start-up is paid by its first pass, inside the level)
        reserve = 2 * cost.iteration_seconds(voxels[index]) + sum(
            n * cost.iteration_seconds(v) + o for n, v, o in zip(plan[1:], voxels[index + 1 :], overhead[1:]) if n > 0
        )
        level_deadline = None if deadline is None else deadline - reserve
        if level_kind(index) == "mind":
            settings = cfg.mind_level
        elif route == "mind":
            settings = cfg.level
        else:
            settings = cfg.level if cfg.steps is None else dataclasses.replace(cfg.level, step=cfg.steps[index])
        # the plan decides which levels run and what the later ones reserve; the pyramid's last level may do more than
        # planned, up to its configured iterations, within its deadline: a pessimistic cost estimate (a slow first
        # pass) left 3.5 s of a cross pair's 10 s idle otherwise. Earlier levels keep to the plan (letting them run on
        # took the time from the finer levels: -0.007 Dice on a cross pair at 10 s).
        iterations = wanted[index] if index == len(factors) - 1 else plan[0]
        result = optimise_level(f_img, m_img, current, kernels, iterations, settings, level_deadline)
        if result.passes == 0:  # stopped before its first pass: the coarser field stands
            seconds = time.monotonic() - level_start
            trace.levels.append(LevelTrace(factor, shape, plan[0], 0, None, None, seconds, level_kind(index)))
            trace.stopped_by_deadline = True
            continue
        cost.update(result.seconds, result.passes, voxels[index], result.first_pass_seconds)
        disp = result.displacement
        trace.levels.append(
            LevelTrace(
                factor,
                shape,
                plan[0],
                result.iterations,
                result.similarity_start,
                result.similarity_best,
                time.monotonic() - level_start,
                level_kind(index),
            )
        )
        trace.similarity_after = result.similarity_best
        last = (kernels, f_img, m_img, shape)
        trace.stopped_by_deadline |= result.stopped_by_deadline
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
    if disp is None:
        disp = torch.zeros((1, 3, *crop_shape), device=device)
        trace.stopped_by_deadline = True
    elif last is not None:  # the starting field scored on the finest grid that ran (one evaluation)
        kernels, f_img, m_img, shape = last
        start_field = (
            torch.zeros((1, 3, *shape), device=device) if init is None else spatial.resize_displacement(init, shape)
        )
        trace.similarity_before = kernels.similarity_field(f_img, m_img, start_field)[0]
        if trace.similarity_after is None or trace.similarity_before >= trace.similarity_after:
            # nothing beat the starting field (e.g. one iteration under a tight deadline): return it
            disp, trace.similarity_after = start_field, trace.similarity_before
    disp = images.uncrop(spatial.resize_displacement(disp, crop_shape), box, full_shape)
    trace.similarity = route
    trace.seconds = time.monotonic() - start
    return disp, trace
