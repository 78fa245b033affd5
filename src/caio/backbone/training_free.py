"""Training-free registration: MIND-SSC features, discrete convex search, Adam refinement.

No weights are needed; it runs on CPU and GPU and works within and across contrasts because
its only similarity is the sum of squared differences of MIND-SSC descriptors
(:mod:`caio.similarity.mind`). The method follows the ConvexAdam idea (Siebert, Hansen & Heinrich
2021) and is implemented from that description:

1. **Features.** MIND-SSC of both images at full resolution; for the search they are
   box-filtered and resampled (:func:`caio.spatial.resize_image`) onto the search grid
   (image / ``search_factor``).
2. **Discrete search** on the search grid. A cost volume holds, for every voxel and every
   integer displacement within ``+-search_radius`` search-grid voxels, the feature SSD
   averaged over a small box. The coupled convex optimisation alternates (a) a Gaussian
   smoothing of the current field and (b) a per-voxel argmin of ``cost + coupling * |d - smooth|^2``
   with increasing coupling. This is done forward (fixed -> moving) and backward, and the two
   fields are made inverse-consistent.
3. **Instance optimisation** with Adam of a displacement grid on the Adam grid (image /
   ``adam_factor``), initialised with the search result: every iteration compares the
   full-resolution fixed features with the moving features at the displaced positions on a
   seeded random subset of foreground voxels (stochastic, so the cost does not grow with the
   image size), plus a diffusion penalty on the grid; the result is Gaussian-smoothed.
4. The result is upsampled to the image grid with :func:`caio.spatial.resize_displacement`.

All coordinate work uses :mod:`caio.spatial` (displacements in voxels, channel ``c`` along
array axis ``c``, ``warped(x) = moving(x + disp(x))``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from caio import spatial
from caio.refine.adam import Adam
from caio.refine.losses import diffusion
from caio.similarity.mind import mind_ssc
from caio.similarity.windows import box_mean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingFreeConfig:
    """Settings of :func:`register_training_free` (defaults tuned on 1 mm brain MRI).

    Attributes:
        mind_radius: MIND patch half-width, in image voxels (patch side ``2 r + 1``).
        mind_dilation: distance of the compared MIND neighbours, in image voxels.
        feature_factor: MIND-SSC is computed on a grid this many times coarser than the image
            (the image is anti-aliased and resampled first; radius and dilation are then in
            feature-grid voxels, the dilation divided by this factor); 1: full resolution.
        search_factor: the discrete search runs on a grid ``search_factor`` times coarser
            than the image (search-grid voxel = about ``search_factor`` image voxels).
        search_radius: largest displacement tried per axis, in search-grid voxels; the number
            of candidates is ``(2 * search_radius + 1) ** 3``.
        cost_box: half-width, in search-grid voxels, of the box over which the feature SSD
            of each candidate is averaged (0: single voxel).
        coupling: coupling weights of the successive convex steps, in units of the mean
            cost per squared search-grid voxel; empty: plain argmin.
        convex_sigma: Gaussian sigma, in search-grid voxels, of the smoothing between convex
            steps and of the final smoothing of the discrete field.
        consistency_iters: forward/backward inverse-consistency iterations of the discrete
            field (0: forward search only, half the search cost).
        adam_factor: the Adam grid is ``adam_factor`` times coarser than the image.
        adam_iters: Adam iterations (0: discrete field only).
        adam_lr: Adam learning rate, in Adam-grid voxels per step.
        diffusion_weight: weight of the diffusion penalty (mean squared finite difference
            of the displacement, in Adam-grid voxels) relative to the feature SSD.
        adam_sigma: Gaussian sigma, in Adam-grid voxels, applied to the field before every
            warp and to the result (0: none); keeps the field smooth and folding-free.
        adam_points: voxels drawn (from the dilated foreground) per Adam iteration for the
            similarity; the features are compared at full image resolution there.
        seed: seed of the voxel draws (the result is deterministic for a given seed on CPU).
        low_memory: process the cost volume in chunks (slower, a fraction of the memory).
    """

    mind_radius: int = 1
    mind_dilation: int = 2
    feature_factor: int = 1
    search_factor: int = 4
    search_radius: int = 3
    cost_box: int = 1
    coupling: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    convex_sigma: float = 1.0
    consistency_iters: int = 8
    adam_factor: int = 2
    adam_iters: int = 50
    adam_lr: float = 1.0
    diffusion_weight: float = 0.1
    adam_sigma: float = 1.0
    adam_points: int = 60_000
    seed: int = 0
    low_memory: bool = False


def _coarse_shape(shape: Sequence[int], factor: int) -> tuple[int, ...]:
    """Grid with a spacing of about ``factor`` voxels over the same field of view (align_corners)."""
    return spatial.scaled_shape(shape, factor, minimum=2)


def _pool_to(features: torch.Tensor, shape: Sequence[int], factor: int) -> torch.Tensor:
    """Box-prefilter (side ``factor + 1``, odd) then resample onto the coarse ``shape`` (align_corners)."""
    pooled = box_mean(features, factor // 2 if factor % 2 == 0 else (factor - 1) // 2)
    return spatial.resize_image(pooled, shape, antialias=False)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _candidates(radius: int, device: torch.device) -> torch.Tensor:
    """``[K, 3]`` integer displacements within ``+-radius`` per axis (float32)."""
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)


def cost_volume(fixed_feat: torch.Tensor, moving_feat: torch.Tensor, radius: int, box: int) -> torch.Tensor:
    """Feature SSD for every integer displacement within ``+-radius``.

    Args:
        fixed_feat, moving_feat: ``[1, C, d0, d1, d2]`` features on the same grid.
        radius: search radius in grid voxels.
        box: half-width of the box average of the cost (0: none).
    Returns:
        ``[K, d0, d1, d2]`` costs; candidate ``k`` is row ``k`` of :func:`_candidates`.
    """
    shape = fixed_feat.shape[2:]
    padded = F.pad(moving_feat, [radius] * 6, mode="replicate")
    costs = []
    for o in _candidates(radius, torch.device("cpu")).long().tolist():
        s = [slice(radius + oi, radius + oi + n) for oi, n in zip(o, shape)]
        costs.append(((fixed_feat - padded[:, :, s[0], s[1], s[2]]) ** 2).mean(dim=1))
    cost = torch.cat(costs, dim=0)[None]
    return box_mean(cost, box)[0]


def _argmin_coupled(
    cost: torch.Tensor, cands: torch.Tensor, prior: torch.Tensor | None, weight: float, chunk: int | None
) -> torch.Tensor:
    """Per voxel ``argmin_k cost[k] + weight * |cands[k] - prior|^2``.

    Args:
        cost: ``[K, d0, d1, d2]``; cands: ``[K, 3]``; prior: ``[1, 3, d0, d1, d2]`` or None.
    Returns:
        ``[1, 3, d0, d1, d2]`` chosen displacements (grid voxels).
    """
    k, *shape = cost.shape
    flat = cost.reshape(k, -1)
    n = flat.shape[1]
    step = n if chunk is None else chunk
    out = torch.empty(3, n, device=cost.device)
    sq = (cands**2).sum(1, keepdim=True)
    for start in range(0, n, step):
        c = flat[:, start : start + step]
        if prior is not None and weight > 0:
            p = prior.reshape(3, -1)[:, start : start + step]
            c = c + weight * (sq - 2.0 * cands @ p + (p**2).sum(0, keepdim=True))
        out[:, start : start + step] = cands[c.argmin(dim=0)].T
    return out.reshape(1, 3, *shape)


def _convex_search(
    cost: torch.Tensor, cands: torch.Tensor, cfg: TrainingFreeConfig, deadline: float | None
) -> torch.Tensor:
    """Coupled convex optimisation over a cost volume; returns a smoothed ``[1, 3, d0, d1, d2]`` field."""
    chunk = 65536 if cfg.low_memory else None
    scale = float(cost.mean())
    disp = _argmin_coupled(cost, cands, None, 0.0, chunk)
    for weight in cfg.coupling:
        if _past(deadline):
            break
        smooth = spatial.gaussian_blur(disp, cfg.convex_sigma)
        disp = _argmin_coupled(cost, cands, smooth, weight * scale, chunk)
    return spatial.gaussian_blur(disp, cfg.convex_sigma)


def _make_consistent(forward: torch.Tensor, backward: torch.Tensor, iters: int) -> torch.Tensor:
    """Iteratively replace each field by the mean of itself and minus the other one pulled along it."""
    for _ in range(iters):
        f_new = 0.5 * (forward - spatial.warp(backward, forward))
        b_new = 0.5 * (backward - spatial.warp(forward, backward))
        forward, backward = f_new, b_new
    return forward


def discrete_field(
    fixed_feat: torch.Tensor, moving_feat: torch.Tensor, cfg: TrainingFreeConfig, deadline: float | None = None
) -> torch.Tensor:
    """Discrete (convex) registration on the search grid.

    Args:
        fixed_feat, moving_feat: ``[1, C, d0, d1, d2]`` features on the search grid.
    Returns:
        ``[1, 3, d0, d1, d2]`` displacement in search-grid voxels.
    """
    cands = _candidates(cfg.search_radius, fixed_feat.device)
    cost = cost_volume(fixed_feat, moving_feat, cfg.search_radius, cfg.cost_box)
    forward = _convex_search(cost, cands, cfg, deadline)
    del cost
    if cfg.consistency_iters <= 0 or _past(deadline):
        return forward
    cost = cost_volume(moving_feat, fixed_feat, cfg.search_radius, cfg.cost_box)
    backward = _convex_search(cost, cands, cfg, deadline)
    del cost
    return _make_consistent(forward, backward, cfg.consistency_iters)


def _foreground_indices(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Flat indices of voxels where either image is non-zero, dilated by 2 voxels (all if none)."""
    fg = ((fixed > 0) | (moving > 0)).float()
    fg = F.max_pool3d(fg, kernel_size=5, stride=1, padding=2)[0, 0].flatten()
    idx = torch.nonzero(fg > 0).flatten()
    return idx if idx.numel() > 0 else torch.arange(fg.numel(), device=fg.device)


def adam_refine(
    fixed_feat: torch.Tensor,
    moving_feat: torch.Tensor,
    init: torch.Tensor,
    sample_from: torch.Tensor,
    cfg: TrainingFreeConfig,
    deadline: float | None = None,
) -> torch.Tensor:
    """Stochastic Adam optimisation of a coarse displacement grid against full-resolution features.

    Every iteration draws ``cfg.adam_points`` voxels (seeded, so deterministic) from
    ``sample_from``, compares the fixed features there with the moving features at the
    displaced positions, and adds the diffusion penalty of the whole grid.

    Args:
        fixed_feat, moving_feat: ``[1, C, D0, D1, D2]`` features on the image grid.
        init: ``[1, 3, d0, d1, d2]`` initial displacement on the Adam grid (Adam-grid voxels).
        sample_from: ``[P]`` flat voxel indices to draw from.
    Returns:
        ``[1, 3, d0, d1, d2]`` smoothed displacement (Adam-grid voxels).
    """
    shape = fixed_feat.shape[2:]
    grid_shape = init.shape[2:]
    dev = fixed_feat.device
    to_grid = torch.tensor(spatial.grid_scale(grid_shape, shape), device=dev).view(3, 1)
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=dev).view(3, 1)
    fixed_flat = fixed_feat.reshape(fixed_feat.shape[1], -1)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    n_points = min(cfg.adam_points, sample_from.numel())
    param = init.detach().clone().requires_grad_(True)
    adam = Adam([param], cfg.adam_lr)
    for it in range(cfg.adam_iters):
        if _past(deadline):
            log.info("training-free: deadline reached after %d Adam iterations", it)
            break
        pick = sample_from[torch.randint(sample_from.numel(), (n_points,), generator=gen, device=dev)]
        pos = torch.stack([pick // strides[0, 0], (pick // strides[1, 0]) % shape[1], pick % shape[2]]).float()
        disp_grid = spatial.sample(param, (pos * to_grid).view(1, 3, -1, 1, 1))  # Adam-grid voxels
        moved = pos.view(1, 3, -1, 1, 1) + disp_grid / to_grid.view(1, 3, 1, 1, 1)
        warped = spatial.sample(moving_feat, moved).view(moving_feat.shape[1], -1)
        sim = ((warped - fixed_flat[:, pick]) ** 2).mean()
        loss = sim + cfg.diffusion_weight * diffusion(param)
        param.grad = None
        loss.backward()
        adam.step()
    with torch.no_grad():
        return spatial.gaussian_blur(param, cfg.adam_sigma) if cfg.adam_sigma > 0 else param.detach()


def register_training_free(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    cfg: TrainingFreeConfig | None = None,
    device: torch.device | str | None = None,
    deadline: float | None = None,
) -> torch.Tensor:
    """Register ``moving`` onto ``fixed`` without learned weights.

    Args:
        fixed, moving: ``[1, 1, D0, D1, D2]`` float32 images on the same grid, intensities in
            [0, 255] as read from disk (normalised internally by :func:`caio.similarity.mind.mind_ssc`).
        cfg: settings (default :class:`TrainingFreeConfig`).
        device: where to compute (default: the device of ``fixed``).
        deadline: ``time.monotonic()`` value after which remaining stages are skipped and
            Adam stops; the best field so far is returned (zero if the search did not run).
    Returns:
        ``[1, 3, D0, D1, D2]`` float32 displacement in image voxels on the fixed grid
        (``warped(x) = moving(x + disp(x))``), on ``device``.
    """
    cfg = cfg or TrainingFreeConfig()
    spatial.check_image_pair(fixed, moving)
    device = torch.device(device) if device is not None else fixed.device
    shape = tuple(fixed.shape[2:])
    zero = torch.zeros((1, 3, *shape), device=device)
    if _past(deadline):
        return zero
    t0 = time.monotonic()
    with torch.no_grad():
        fixed_d, moving_d = fixed.to(device, torch.float32), moving.to(device, torch.float32)
        if cfg.feature_factor > 1:
            feature_shape = _coarse_shape(shape, cfg.feature_factor)
            fixed_d, moving_d = (spatial.resize_image(x, feature_shape) for x in (fixed_d, moving_d))
        dilation = max(1, cfg.mind_dilation // cfg.feature_factor)
        mind_f = mind_ssc(fixed_d, cfg.mind_radius, dilation)
        mind_m = mind_ssc(moving_d, cfg.mind_radius, dilation)
        search_shape = _coarse_shape(shape, cfg.search_factor)
        relative = max(1, cfg.search_factor // cfg.feature_factor)
        coarse_f = _pool_to(mind_f, search_shape, relative)
        coarse_m = _pool_to(mind_m, search_shape, relative)
    t1 = time.monotonic()
    if _past(deadline):
        return zero
    adam_shape = _coarse_shape(shape, cfg.adam_factor)
    with torch.no_grad():
        coarse = discrete_field(coarse_f, coarse_m, cfg, deadline)
        disp = spatial.resize_displacement(coarse, adam_shape)
    t2 = time.monotonic()
    if cfg.adam_iters > 0 and not _past(deadline):
        points = _foreground_indices(fixed_d, moving_d)
        with torch.enable_grad():
            disp = adam_refine(mind_f, mind_m, disp, points, cfg, deadline)
    t3 = time.monotonic()
    log.info("training-free: features %.1fs, search %.1fs, adam %.1fs", t1 - t0, t2 - t1, t3 - t2)
    with torch.no_grad():
        return spatial.resize_displacement(disp.detach(), shape).float().contiguous()
