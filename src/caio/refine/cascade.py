"""Instance-optimisation cascade: 3 small U-Nets refine an initial displacement per pair.

Method (after "Adapting Frozen Mono-modal Backbones for Multi-modal Registration via
Contrast-Agnostic Instance Optimization"; implemented from its description):

* Stage ``k`` works on a grid ``stage_factors[k]`` times coarser than the image (default
  1/4, 1/2, 1/2). Its U-Net (:mod:`caio.refine.networks`) sees the fixed image, the moving image
  warped by the current field and (``field_input``) that field, and predicts a residual
  displacement on the stage grid, multiplied by ``residual_scales[k]`` (finest: 0.05).
* ``composition="compositional"`` (default): the previous field is resized to the stage grid
  (:func:`caio.spatial.resize_displacement`) and composed with the residual,
  ``v_k = compose(v_{k-1}, r_k)`` (:func:`caio.spatial.compose`: warping by ``v_k`` = warping by
  ``v_{k-1}`` then by ``r_k``). The initial field ``u0`` is applied first: the networks work on
  ``warp(moving, u0)`` and the result is ``compose(u0, v_K)``.
  ``composition="additive"``: ``v_k = v_{k-1} + r_k`` and the result is ``u0 + v_K`` (the
  stages then warp the original moving image by ``u0 + v_k``). With ``u0 = 0`` and ``v_{k-1} = 0``
  both are identical.
* Loss per optimisation step: mean over stages of :func:`caio.refine.losses.lncc_loss` between the
  fixed and the moving image warped by that stage's field, on that stage's grid, plus
  ``diffusion_weight * diffusion(v_K)`` (the cascade's own field, stage-K voxels).
  For cross-contrast pairs ``fixed_sim`` / ``moving_sim`` (Brain-ID T1-like images or MIND
  maps) replace the images in the loss; the networks always see the images.
* Adam (lr 5e-4, linear warm-up) over the weights of all stages, ``steps`` steps or until
  the deadline; the field of the step with the lowest loss is returned.

Image normalisation happens in one place, :func:`normalize_image` (robust maximum -> about
[0, 1]); similarity inputs are used as given (LNCC does not depend on their scale).
All coordinate work goes through :mod:`caio.spatial` (voxel displacements, channel ``c`` along
array axis ``c``, ``warped(x) = moving(x + disp(x))``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from caio import spatial
from caio.device import autocast
from caio.refine.adam import Adam
from caio.refine.losses import diffusion
from caio.refine.networks import build_cascade, load_weights
from caio.refine.settings import CascadeConfig
from caio.similarity.lncc import lncc_loss
from caio.similarity.mind import normalize_intensity

log = logging.getLogger(__name__)


@dataclass
class RefineReport:
    """What :func:`refine` did.

    Attributes:
        steps: completed Adam steps.
        losses: total loss of every forward pass (index = step; one more than ``steps`` when
            the deadline stopped the loop between a forward and its update).
        best_step: index into ``losses`` of the returned field (-1: the initial field).
        seconds: wall time of the call.
        stopped_by_deadline: the loop ended early because of ``deadline``.
        stage_shapes: the stage grids.
    """

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    best_step: int = -1
    seconds: float = 0.0
    stopped_by_deadline: bool = False
    stage_shapes: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class StageInputs:
    """Per-stage tensors of one pair (lists indexed by stage), built by :func:`prepare_inputs`.

    ``fixed``/``moving``: ``[1, 1, *s_k]`` normalised network inputs (compositional: moving
    already warped by the initial field). ``fixed_sim``/``moving_sim``: ``[1, C, *s_k]`` loss
    inputs. ``base``: additive mode, the initial field on each stage grid (else ``None``).
    """

    fixed: list[torch.Tensor]
    moving: list[torch.Tensor]
    fixed_sim: list[torch.Tensor]
    moving_sim: list[torch.Tensor]
    base: list[torch.Tensor | None]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(t.shape[2:]) for t in self.fixed]


def stage_shape(shape: Sequence[int], factor: int) -> tuple[int, ...]:
    """Grid ``factor`` times coarser over the same field of view (align_corners), >= 4 per axis."""
    if factor == 1:
        return tuple(int(n) for n in shape)
    return spatial.scaled_shape(shape, factor, minimum=4)


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """The cascade's one intensity normalisation: [0, 255] image -> about [0, 1] (robust max)."""
    return normalize_intensity(image)


def combine(previous: torch.Tensor, residual: torch.Tensor, composition: str) -> torch.Tensor:
    """Field after a stage: ``compose(previous, residual)`` or ``previous + residual`` ([1, 3, *s])."""
    if composition == "additive":
        return previous + residual
    return spatial.compose(previous, residual)


def prepare_inputs(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    init_disp: torch.Tensor,
    cfg: CascadeConfig,
    fixed_sim: torch.Tensor | None = None,
    moving_sim: torch.Tensor | None = None,
) -> StageInputs:
    """Normalise, (compositional) pre-warp by the initial field and resize to every stage grid.

    Args:
        fixed, moving: ``[1, 1, D0, D1, D2]`` images in [0, 255].
        init_disp: ``[1, 3, D0, D1, D2]`` initial displacement, image voxels.
        fixed_sim, moving_sim: ``[1, C, D0, D1, D2]`` similarity inputs or ``None`` (the images).
    """
    shape = tuple(fixed.shape[2:])
    with torch.no_grad():
        f_img, m_img = normalize_image(fixed), normalize_image(moving)
        f_sim = f_img if fixed_sim is None else fixed_sim.float()
        m_sim = m_img if moving_sim is None else moving_sim.float()
        if cfg.composition == "compositional" and bool(init_disp.abs().max() > 0):
            m_img = spatial.warp(m_img, init_disp)
            m_sim = m_img if moving_sim is None else spatial.warp(m_sim, init_disp)
        out = StageInputs([], [], [], [], [])
        done: dict[int, int] = {}  # factor -> index of the first stage with it (same grid, same tensors)
        for k, factor in enumerate(int(f) for f in cfg.stage_factors):
            if factor in done:
                for name in ("fixed", "moving", "fixed_sim", "moving_sim", "base"):
                    getattr(out, name).append(getattr(out, name)[done[factor]])
                continue
            done[factor] = k
            s = stage_shape(shape, factor)
            out.fixed.append(spatial.resize_image(f_img, s))
            out.moving.append(spatial.resize_image(m_img, s))
            out.fixed_sim.append(out.fixed[-1] if fixed_sim is None else spatial.resize_image(f_sim, s))
            out.moving_sim.append(out.moving[-1] if moving_sim is None else spatial.resize_image(m_sim, s))
            out.base.append(spatial.resize_displacement(init_disp, s) if cfg.composition == "additive" else None)
    return out


def cascade_forward(
    nets: nn.ModuleList, inputs: StageInputs, cfg: CascadeConfig, abort: Callable[[], bool] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None:
    """One pass through all stages.

    Returns:
        ``(loss, field, stage_losses)``: scalar total loss, ``[1, 3, *s_K]`` cascade field
        ``v_K`` (stage-K voxels, without the initial field), per-stage LNCC losses; or ``None``
        when ``abort()`` returned True between two stages.
    """
    field_k = None
    stage_losses = []
    for k, net in enumerate(nets):
        if abort is not None and k > 0 and abort():
            return None
        fixed_k, moving_k, base_k = inputs.fixed[k], inputs.moving[k], inputs.base[k]
        s = fixed_k.shape[2:]
        previous = (
            torch.zeros((1, 3, *s), device=fixed_k.device)
            if field_k is None
            else spatial.resize_displacement(field_k, s)
        )
        total = previous if base_k is None else base_k + previous
        parts = [fixed_k, spatial.warp(moving_k, total)]
        if cfg.field_input:
            parts.append(total * cfg.field_input_scale)
        with autocast(fixed_k.device, "bf16" if cfg.amp else "fp32"):
            residual = net(torch.cat(parts, dim=1))
        residual = residual.float() * float(cfg.residual_scales[k])
        field_k = combine(previous, residual, cfg.composition)
        total = field_k if base_k is None else base_k + field_k
        warped_sim = spatial.warp(inputs.moving_sim[k], total)
        stage_losses.append(lncc_loss(inputs.fixed_sim[k], warped_sim, cfg.lncc_sigma, cfg.lncc_eps))
    loss = torch.stack(stage_losses).mean() + cfg.diffusion_weight * diffusion(field_k)
    return loss, field_k, stage_losses


def finalize(init_disp: torch.Tensor, cascade_field: torch.Tensor | None, cfg: CascadeConfig) -> torch.Tensor:
    """Full-resolution result: ``compose(u0, up(v_K))`` or ``u0 + up(v_K)`` (``[1, 3, D0, D1, D2]``)."""
    with torch.no_grad():
        if cascade_field is None:
            return init_disp.detach().float().clone()
        up = spatial.resize_displacement(cascade_field, init_disp.shape[2:])
        return combine(init_disp.float(), up, cfg.composition).contiguous()


def _check(fixed, moving, init_disp, fixed_sim, moving_sim) -> None:
    if fixed.dim() != 5 or fixed.shape[:2] != (1, 1) or moving.shape != fixed.shape:
        raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} must both be [1, 1, D0, D1, D2]")
    if tuple(init_disp.shape) != (1, 3, *fixed.shape[2:]):
        raise ValueError(
            f"init_disp must be [1, 3, {', '.join(map(str, fixed.shape[2:]))}], got {tuple(init_disp.shape)}"
        )
    if (fixed_sim is None) != (moving_sim is None):
        raise ValueError("give both fixed_sim and moving_sim, or neither")
    if fixed_sim is not None and (fixed_sim.shape[2:] != fixed.shape[2:] or fixed_sim.shape != moving_sim.shape):
        raise ValueError(
            f"fixed_sim {tuple(fixed_sim.shape)} / moving_sim {tuple(moving_sim.shape)} must be [1, C, *image shape]"
        )


def refine(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    init_disp: torch.Tensor,
    cfg: CascadeConfig | None = None,
    fixed_sim: torch.Tensor | None = None,
    moving_sim: torch.Tensor | None = None,
    init_state: str | os.PathLike | Mapping | None = None,
    deadline: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, RefineReport]:
    """Refine ``init_disp`` for one pair by instance optimisation of the cascade.

    Args:
        fixed, moving: ``[1, 1, D0, D1, D2]`` float32 images in [0, 255] on the same grid.
        init_disp: ``[1, 3, D0, D1, D2]`` initial displacement in voxels (fixed grid).
        cfg: settings (default :class:`CascadeConfig`).
        fixed_sim, moving_sim: optional ``[1, C, D0, D1, D2]`` contrast-adapted similarity inputs.
        init_state: weights file path or state dict from ``caio pretrain`` (``None``: random init).
        deadline: absolute ``time.monotonic()`` value; the loop stops before it (predicting the
            next step's duration) and returns the best field so far.
        seed: seed of the network initialisation (CPU results are reproducible).
    Returns:
        ``(disp, report)``: ``[1, 3, D0, D1, D2]`` float32 displacement in voxels on the device
        of ``fixed`` and a :class:`RefineReport`.
    """
    cfg = cfg or CascadeConfig()
    t_start = time.monotonic()
    _check(fixed, moving, init_disp, fixed_sim, moving_sim)
    device = fixed.device
    init_disp = init_disp.to(device, torch.float32)
    report = RefineReport()

    def remaining() -> float:
        return math.inf if deadline is None else deadline - time.monotonic()

    if remaining() <= 0:
        report.stopped_by_deadline, report.seconds = True, time.monotonic() - t_start
        return finalize(init_disp, None, cfg), report
    inputs = prepare_inputs(
        fixed.float(),
        moving.float(),
        init_disp,
        cfg,
        None if fixed_sim is None else fixed_sim.to(device),
        None if moving_sim is None else moving_sim.to(device),
    )
    report.stage_shapes = inputs.shapes
    nets = build_cascade(
        len(cfg.stage_factors), cfg.arch["in_channels"], cfg.base_channels, cfg.depth, seed, cfg.head_std
    )
    if init_state is not None:
        load_weights(nets, init_state, cfg.arch)
    nets.to(device).train()
    # time of the final upsample + combination, measured on a zero field (= reserve before the deadline)
    t0 = time.monotonic()
    finalize(init_disp, torch.zeros((1, 3, *inputs.shapes[-1]), device=device), cfg)
    reserve = 1.5 * (time.monotonic() - t0) + 0.005

    best_loss, best_field = _optimise(nets, inputs, cfg, remaining, reserve, report)
    disp = finalize(init_disp, best_field, cfg)
    report.seconds = time.monotonic() - t_start
    log.info(
        "cascade: %d steps in %.1fs, loss %.4f -> best %.4f (step %d)%s",
        report.steps,
        report.seconds,
        report.losses[0] if report.losses else math.nan,
        best_loss,
        report.best_step,
        ", stopped by deadline" if report.stopped_by_deadline else "",
    )
    return disp, report


def _optimise(
    nets: nn.ModuleList,
    inputs: StageInputs,
    cfg: CascadeConfig,
    remaining: Callable[[], float],
    reserve: float,
    report: RefineReport,
) -> tuple[float, torch.Tensor | None]:
    """Adam steps on the cascade's weights until ``cfg.steps`` or the deadline; ``(best loss, its field)``.

    A step starts only if its forward and backward passes (predicted from the slowest recent ones, with a 10 %
    margin) end ``reserve`` seconds before the deadline; the first forward pass is aborted between stages if it
    would not. ``report`` receives the losses, steps and best step.
    """
    optimizer = Adam(nets.parameters(), lr=cfg.lr)
    best_loss, best_field = math.inf, None
    fwd_time = bwd_time = None
    for step in range(cfg.steps):
        if fwd_time is not None and remaining() < 1.1 * (fwd_time + bwd_time) + reserve:
            report.stopped_by_deadline = True
            break
        t0 = time.monotonic()
        abort = (lambda: remaining() < reserve) if fwd_time is None else None
        out = cascade_forward(nets, inputs, cfg, abort)
        if out is None:
            report.stopped_by_deadline = True
            break
        loss, cascade_field, _ = out
        value = float(loss.detach())
        report.losses.append(value)
        if value < best_loss:
            best_loss, best_field, report.best_step = value, cascade_field.detach().clone(), step
        t1 = time.monotonic()
        predicted_bwd = bwd_time if bwd_time is not None else 2.5 * (t1 - t0)
        if remaining() < 1.1 * predicted_bwd + reserve:
            report.stopped_by_deadline = True
            break
        optimizer.warm_up(cfg.lr, step, cfg.warmup_steps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        report.steps = step + 1
        t2 = time.monotonic()
        fwd_time = t1 - t0 if fwd_time is None else max(0.7 * fwd_time + 0.3 * (t1 - t0), t1 - t0)
        bwd_time = t2 - t1 if bwd_time is None else max(0.7 * bwd_time + 0.3 * (t2 - t1), t2 - t1)
    return best_loss, best_field
