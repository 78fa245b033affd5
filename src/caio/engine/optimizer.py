"""One resolution level of the engine: greedy diffeomorphic gradient steps, deadline-aware.

Each iteration (Greedy / SyN-style, from their published descriptions):

1. warp the moving image (or its features) with the current field ``u``;
2. similarity and its gradient with respect to the warped image (:mod:`caio.similarity.lncc`,
   :mod:`caio.similarity.ssd`),
   times the spatial gradient of the warped image: the first variation of the similarity for
   a small update ``v`` applied *before* ``u`` (``x -> x + v(x) + u(x + v(x))``);
3. smooth that gradient with a Gaussian (``sigma_update``, "fluid" regularisation) and scale it
   so that its largest step is ``step`` voxels;
4. compose the field with the update (or add it), then smooth the field (``sigma_field``,
   "elastic" regularisation).

The deadline is checked before every iteration; the field of the best similarity seen is kept
and returned, so the result is valid whenever the loop stops. Shapes: images
``[1, C, D0, D1, D2]``, displacements ``[1, 3, D0, D1, D2]`` in voxels of the level's grid
(:mod:`caio.spatial` convention).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from caio import spatial

OUTLIER_QUANTILE = 0.999
"""The quantile of the update's vector lengths that :attr:`LevelSettings.outlier_ratio` refers to."""

TORCH_QUANTILE_LIMIT = 1 << 24
"""Most elements :func:`torch.quantile` accepts."""

SimilarityFn = Callable[[torch.Tensor, torch.Tensor], tuple[float, torch.Tensor]]
"""``(fixed, warped) -> (similarity, d similarity / d warped)``; higher similarity is better."""


@dataclass(frozen=True)
class LevelSettings:
    """Optimiser settings of one level.

    Attributes:
        step: largest update per iteration, in voxels of the level's grid: 1.5 beat 1.0 (Dice
            +0.0019 on the 8 LUMIR-like T1 <- T1 pairs) and 2.0 (folding appears).
        sigma_update: Gaussian smoothing of the update, voxels (0: none).
        sigma_field: Gaussian smoothing of the field after each update, voxels (0: none).
        compose: compose updates (diffeomorphic, Greedy's default) instead of adding them.
        quantile: scale the update so that this quantile of its vector lengths is ``step``
            (``1.0``: the longest vector, as Greedy); longer vectors are clamped to
            ``clamp * step``.
        clamp: see ``quantile``.
        outlier_ratio: with ``quantile`` 1.0, the longest vector counts as at most this many times the
            99.9th percentile of the lengths (:data:`OUTLIER_QUANTILE`), and longer vectors are clamped to
            ``step``: a few outlying vectors (the edge of a moving scan's field of view, a scalp edge) no longer
            set the pace of the whole field. ``None``: the longest vector, as Greedy.
        final_step: when set, the largest update shrinks linearly from ``step`` at a level's first
            iteration to ``final_step`` at its last planned one (annealing).
    """

    step: float = 1.5
    sigma_update: float = 1.0
    sigma_field: float = 0.5
    compose: bool = True
    quantile: float = 1.0
    clamp: float = 2.0
    final_step: float | None = None
    outlier_ratio: float | None = None

    def at_iteration(self, done: int, planned: int) -> LevelSettings:
        """The settings of iteration ``done`` (0-based) of ``planned``: ``step`` annealed
        towards ``final_step`` when that is set."""
        if self.final_step is None or planned <= 1:
            return self
        fraction = min(done / (planned - 1), 1.0)
        return dataclasses.replace(self, step=self.step + (self.final_step - self.step) * fraction)


@dataclass
class LevelResult:
    """What one level did: iterations run, similarity at the start and of the returned field.

    ``passes`` counts the similarity evaluations (``iterations`` updates plus the scoring of the
    last field); ``0`` means the deadline stopped the level before it scored anything, and then
    ``displacement`` is the starting field and both similarities are ``-inf``. ``first_pass_seconds``:
    the first pass (score and update), slower than the later ones on a grid the process has not used yet.
    """

    displacement: torch.Tensor
    iterations: int
    passes: int
    similarity_start: float
    similarity_best: float
    seconds: float
    stopped_by_deadline: bool
    first_pass_seconds: float | None = None


def spatial_gradient(image: torch.Tensor) -> torch.Tensor:
    """Central differences along each array axis (one-sided at the border).

    Args:
        image: ``[1, C, D0, D1, D2]``.
    Returns:
        ``[1, C, 3, D0, D1, D2]``: derivative of every channel along axis 0, 1, 2 (per voxel).
    """
    grads = []
    for axis in (2, 3, 4):
        n = image.shape[axis]
        if n < 2:
            grads.append(torch.zeros_like(image))
            continue
        d = torch.empty_like(image)
        d.narrow(axis, 1, n - 2).copy_((image.narrow(axis, 2, n - 2) - image.narrow(axis, 0, n - 2)) * 0.5)
        d.narrow(axis, 0, 1).copy_(image.narrow(axis, 1, 1) - image.narrow(axis, 0, 1))
        d.narrow(axis, n - 1, 1).copy_(image.narrow(axis, n - 1, 1) - image.narrow(axis, n - 2, 1))
        grads.append(d)
    return torch.stack(grads, dim=2)


def displacement_gradient(similarity_gradient: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Chain rule: ``sum_k dS/dW_k(x) * grad W_k(x)`` as a ``[1, 3, D0, D1, D2]`` field.

    Args:
        similarity_gradient: ``[1, C, D0, D1, D2]`` gradient with respect to the warped image.
        warped: ``[1, C, D0, D1, D2]`` the warped image (or features).
    """
    out = torch.zeros((1, 3, *warped.shape[2:]), dtype=warped.dtype, device=warped.device)
    for k in range(warped.shape[1]):
        out += similarity_gradient[:, k : k + 1] * spatial_gradient(warped[:, k : k + 1])[:, 0]
    return out


class TorchKernels:
    """The iteration's building blocks in PyTorch (any device; the GPU path).

    Args:
        similarity: ``(fixed, warped) -> (similarity, d similarity / d warped)``.
    """

    def __init__(self, similarity: SimilarityFn) -> None:
        self.similarity = similarity

    def similarity_field(
        self, fixed: torch.Tensor, moving: torch.Tensor, disp: torch.Tensor
    ) -> tuple[float, torch.Tensor]:
        """Similarity of ``moving`` warped by ``disp`` and its ascent direction ``[1, 3, ...]``."""
        warped = spatial.warp(moving, disp)
        sim, sim_grad = self.similarity(fixed, warped)
        return sim, displacement_gradient(sim_grad, warped)

    def smooth(self, image: torch.Tensor, sigma: float) -> torch.Tensor:
        """Gaussian blur (replicate padding), as :func:`caio.spatial.gaussian_blur`."""
        return spatial.gaussian_blur(image, sigma)

    def warp(self, image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        """``image`` ``[1, 1, ...]`` warped by ``disp`` ``[1, 3, ...]`` (:func:`caio.spatial.warp`)."""
        return spatial.warp(image, disp)

    def update(
        self, disp: torch.Tensor, gradient: torch.Tensor, settings: LevelSettings, spare: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One regularised step: smooth the gradient, scale its longest vector to
        ``settings.step`` voxels, compose (or add), smooth the field. Returns the new field (a new tensor;
        ``spare``, a field the caller no longer needs, may be reused by backends that manage memory
        themselves: PyTorch's allocator already caches, so it is ignored here)."""
        if settings.sigma_update > 0:
            gradient = spatial.gaussian_blur(gradient, settings.sigma_update)
        lengths = gradient.square().sum(dim=1).sqrt()
        limit = None  # longest step after scaling, voxels (None: no clamp needed)
        if settings.quantile < 1.0:
            top, limit = _sampled_quantile(lengths, settings.quantile), settings.clamp * settings.step
        else:
            top = float(lengths.max())
            if settings.outlier_ratio is not None:
                cap = settings.outlier_ratio * _sampled_quantile(lengths, OUTLIER_QUANTILE)
                top, limit = (min(top, cap) if cap > 0 else top), settings.step
        scale = settings.step / top if top > 0 else 0.0
        step = gradient * scale
        if limit is not None:  # clamp the long tail
            shrink = (limit / (lengths * scale).clamp_min(1e-12)).clamp(max=1.0)
            step = step * shrink.unsqueeze(1)
        disp = spatial.compose(disp, step) if settings.compose else disp + step
        return spatial.gaussian_blur(disp, settings.sigma_field) if settings.sigma_field > 0 else disp


def _sampled_quantile(lengths: torch.Tensor, quantile: float, limit: int = TORCH_QUANTILE_LIMIT) -> float:
    """``quantile`` of the non-zero ``lengths`` ``[1, D0, D1, D2]`` on every 2nd voxel per axis (0 if none), from at
    most ``limit`` of them (evenly spaced: :func:`torch.quantile` refuses more than 2^24, grids above ~134 M voxels)."""
    sample = lengths[:, ::2, ::2, ::2]
    sample = sample[sample > 0]
    if sample.numel() > limit:
        sample = sample[:: sample.numel() // limit + 1]
    return float(torch.quantile(sample.double(), quantile)) if sample.numel() else 0.0


def optimise_level(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    init: torch.Tensor,
    kernels: TorchKernels,
    iterations: int,
    settings: LevelSettings,
    deadline: float | None = None,
) -> LevelResult:
    """Run up to ``iterations`` greedy steps at one resolution.

    Args:
        fixed: ``[1, C, D0, D1, D2]`` fixed image or features.
        moving: ``[1, C, D0, D1, D2]`` moving image or features on the same grid.
        init: ``[1, 3, D0, D1, D2]`` starting displacement (voxels of this grid).
        kernels: :class:`TorchKernels` or :class:`caio.engine.cpu_backend.NumbaKernels`.
        iterations: maximum number of updates.
        settings: step and smoothing.
        deadline: absolute ``time.monotonic()`` by which the level returns: an iteration starts only
            if the longest one so far would still end before it.
    Returns:
        :class:`LevelResult` whose displacement is the best field seen (by similarity).
    """
    start = time.monotonic()
    u = init
    best_u, best_sim, first_sim = init, float("-inf"), None
    spare = None  # a field made here that is neither ``u`` nor ``best_u``: the next update may write into it
    done, passes, stopped = 0, 0, False
    # a pass starts only if the longest one so far would still end before the deadline; the first pass (memory of a
    # new grid first touched: up to 3 times a later one on a 1 mm grid) counts only until a later one is measured
    longest, first_pass = 0.0, None
    for _ in range(iterations + 1):  # the last pass only scores the final field
        now = time.monotonic()
        if deadline is not None and now + longest >= deadline:
            stopped = True
            break
        sim, grad = kernels.similarity_field(fixed, moving, u)
        passes += 1
        first_sim = sim if first_sim is None else first_sim
        if sim > best_sim:
            if best_u is not u and best_u is not init:
                spare = best_u
            best_u, best_sim = u, sim
        if done == iterations:
            break
        new_u = kernels.update(u, grad, settings.at_iteration(done, iterations), spare)
        del grad
        spare = u if u is not best_u and u is not init else None
        u = new_u
        done += 1
        if first_pass is None:
            first_pass = longest = time.monotonic() - now
        else:
            longest = max(longest if done > 2 else 0.0, time.monotonic() - now)
    if first_sim is None:
        first_sim = best_sim
    return LevelResult(best_u, done, passes, first_sim, best_sim, time.monotonic() - start, stopped, first_pass)
