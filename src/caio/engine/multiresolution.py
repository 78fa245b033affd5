"""``caio.register``: the tensor-level registration engine, a short driver over routes and levels.

Multi-resolution, anytime, greedy diffeomorphic optimisation (:mod:`caio.engine.optimizer`) of
LNCC (same contrast), of squared LNCC followed by LNCC against the moving image remapped to the
fixed contrast (cross contrast, :mod:`caio.engine.intensity_map`), or of the squared difference of
MIND-SSC descriptors (with levels of LNCC against the moving image remapped on the MIND-SSC-aligned pair
between and after them), coarse to fine over an image pyramid (:mod:`caio.engine.images`). Every
level yields a valid field; the deadline is checked every iteration, and the schedule
(:mod:`caio.engine.schedule`) trims the finest level's iterations first when time is short. Which similarity
runs at which level is a route (:mod:`caio.engine.routes`); running the levels is :mod:`caio.engine.levels`.

Example::

    import caio, torch
    fixed = torch.rand(1, 1, 64, 64, 64) * 255
    moving = torch.roll(fixed, 2, dims=2)
    disp, trace = caio.register(fixed, moving, deadline=None)
    warped = caio.spatial.warp(moving, disp)        # warped(x) = moving(x + disp(x))
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from caio import spatial
from caio.contrast.gate import GateConfig, decide
from caio.engine import images
from caio.engine.intensity_map import explained_variance
from caio.engine.levels import LevelRunner
from caio.engine.routes import LEAD_SIMILARITIES, first_route, route_after_lead, route_for
from caio.engine.settings import EngineConfig
from caio.engine.trace import EngineTrace
from caio.kernels import fields, filters
from caio.similarity.mind import MIND_CHANNELS

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
voxel (docs/engine.md, "The registration engine"; docs/measurements.md, "Remapped refinement after MIND-SSC")."""


def resolve_similarity(similarity: str, fixed: torch.Tensor, moving: torch.Tensor) -> str:
    """``"auto"``: the contrast gate (:mod:`caio.contrast.gate`) picks :data:`CROSS_CONTRAST_SIMILARITY`
    for a cross-contrast or ambiguous pair and :data:`SAME_CONTRAST_SIMILARITY` otherwise; other
    values are returned unchanged."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity '{similarity}' is not one of {', '.join(SIMILARITIES)}")
    if similarity != "auto":
        return similarity
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
        factors=(1,),
        iterations=(1,),
        mind_factors=(1,),
        mind_iterations=(1,),
        mind_remapped_levels=(),
        crop_margin=-1,
        safeguard=False,  # an image against itself: nothing to check, only kernels to load
    )
    for kind in ("lncc", "mind"):
        register(image, image, similarity=kind, device="cpu", config=config)
    filters.compile_streaming()  # 1 mm volumes only: else the first full-size pair would compile it on its clock
    blank = np.zeros((MIND_CHANNELS, 2, 2, 2), np.float32)  # the safeguard's score: levels of 12^3 are not checked
    fields.masked_warped_ssd(blank, blank, np.zeros((3, 2, 2, 2), np.float32), np.ones((2, 2, 2), bool))
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
    reroute: bool | None = None,
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
        reroute: when the safeguard stops the LNCC route because a level left the pair worse than the start by
            MIND-SSC agreement (:mod:`caio.engine.safeguard`), register again from the start with MIND-SSC: for a
            similarity the contrast gate chose, which takes some FLAIR images for T1 ones. ``None``: only for
            ``similarity="auto"``.
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
    cfg.check_windows(kind)
    box = images.foreground_box(fixed, moving, cfg.crop_margin) if cfg.crop_margin >= 0 else _whole(full_shape)
    fixed, moving = fixed[(..., *box)].contiguous(), moving[(..., *box)].contiguous()
    trace = EngineTrace(similarity=kind)
    runner = LevelRunner(fixed, moving, None if init is None else init[(..., *box)], cfg, device, deadline, trace)
    runner.start_route(first_route(kind, cfg))
    if kind in LEAD_SIMILARITIES and len(runner.route.factors) > 1:
        _run_lead_then_choose(runner, kind)
    else:
        runner.run_levels()
    reroute = similarity == "auto" if reroute is None else reroute
    if reroute and kind == SAME_CONTRAST_SIMILARITY and runner.halted and runner.mind_fits():
        _reroute_to_mind(runner)
    disp = images.uncrop(runner.result(), box, full_shape)
    trace.similarity = runner.route.name
    trace.seconds = time.monotonic() - start
    return disp, trace


def _run_lead_then_choose(runner: LevelRunner, kind: str) -> None:
    """``"cross"`` / ``"mind"``: the lead level, then the route it chooses (:func:`route_after_lead`) to the end
    (``"mind"`` without ``EngineConfig.mind_lead``: straight to the MIND-SSC route when it fits).
    ``"cross"`` measures how much of the fixed image's variance the intensity map explains on the lead's field
    (and keeps remapping if no lead field came out: nothing to measure); ``"mind"`` always tries MIND-SSC."""
    lead = runner.route
    if kind == "mind" and not runner.cfg.mind_lead and runner.mind_fits():
        runner.start_route(route_for("mind", runner.cfg))
        runner.run_levels()
        return
    runner.run_levels(stop=1)
    if kind == "cross" and runner.disp is None:
        runner.run_levels(start=1)
        return
    if kind == "cross":
        full = spatial.resize_displacement(runner.disp, tuple(runner.fixed.shape[2:]))
        warped = spatial.warp(runner.moving, full)
        runner.trace.explained = explained_variance(runner.fixed, warped, runner.cfg.remap_bins)
    chosen = route_after_lead(kind, runner.cfg, runner.trace.explained, runner.mind_fits, lead)
    if chosen.name == "mind":
        runner.start_route(chosen)
        runner.run_levels()
    else:
        runner.route = chosen
        runner.run_levels(start=1)


def _reroute_to_mind(runner: LevelRunner) -> None:
    """The gate called the pair same-contrast, but an LNCC level left it worse than the start by MIND-SSC
    agreement (the safeguard halted the route): the gate's call was probably wrong (a FLAIR taken for a T1), so
    register again from the start, with MIND-SSC."""
    runner.trace.rerouted = f"LNCC made the pair worse ({runner.trace.safeguard[-1]}): MIND-SSC from the start"
    log.warning("engine: %s", runner.trace.rerouted)
    runner.disp = runner.init
    runner.start_route(route_for("mind", runner.cfg))
    runner.run_levels()


def _whole(shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    return (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
