"""Rigid and affine registration in physical space: :func:`register_affine`.

Method (the usual one of linear registration tools, written from its published description):

1. **Initialisation by image moments.** The fixed image's centre of mass is sent to the moving image's
   (translation only); optionally (``principal_axes``) the principal axes of the intensity distribution are
   aligned as well, trying the four sign choices of the eigenvectors. Every candidate, and the headers' own
   alignment (the identity), is scored on the coarsest level; the best one starts the optimisation.
2. **Optimisation over a pyramid** (voxels of about 6 mm, 3 mm, then 2 mm by default; each image is resampled on its
   own grid, so voxel sizes, orientations and fields of view may differ): rigid (3 rotations, 3 translations)
   and, for ``model="affine"``, then also 3 log-scales and 3 shears, optimised with Adam on an analytic gradient:
   the similarity's gradient with respect to the warped image times the moving image's spatial gradient, sampled
   with it (:class:`_Level`; autograd only maps it to the 12 parameters).

Similarity: ``lncc`` (same contrast, :func:`caio.similarity.lncc.lncc_and_gradient`, computed by its fused CPU
version :func:`caio.kernels.similarity.lncc_image_gradient`), ``lncc2`` (its square: a
locally linear relation of either sign, for cross-contrast pairs) or ``mind`` (squared difference of MIND-SSC
descriptors, :mod:`caio.similarity.ssd`; the moving image is first resampled onto a grid with the fixed grid's axes,
since MIND-SSC's channels are tied to array axes). ``caio register`` uses ``lncc2`` for cross-contrast pairs: on the
SPM avg152 T1/T2 pair (4 mm, known transforms, LPS moving grid) it left 0.65 mm (rigid) and 1.6 mm (affine) mean
error at the brain box's corners, MIND-SSC 2.3-4.7 mm.
Masks restrict what the similarity sees: each image is set to 0 outside its own mask before anything else
(intensity normalisation, pyramid), and on every level both images are multiplied by ``w(p) = fixed_mask(p) *
moving_mask(T p) * inside(T p)`` (``inside``: the moving field of view), held constant within a step, so
content outside a mask never enters the score and the mask edge, present in both images at the same place,
pulls in no direction.

Parameters are unitless so that one Adam step moves every kind alike: translations in units of the fixed
image's radius of gyration ``r`` (mm), rotations in radians, scales as ``log``; a change of 0.01 moves points
at distance ``r`` from the centre by about ``0.01 r``.

The world transform ``T`` (4x4, RAS mm) maps a fixed world point to the moving world point it samples:
``T p = M B (p - c_f) + c_m + r t`` with ``M = exp(skew(rotation)) (I + shear) diag(exp(log_scale))``, ``B`` the
initial rotation, ``c_f``/``c_m`` the initial centres.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from caio import spatial
from caio.kernels.fields import sample_through_matrix
from caio.kernels.filters import Workspace
from caio.kernels.similarity import lncc_image_gradient
from caio.similarity.mind import mind_ssc, normalize_intensity
from caio.similarity.ssd import ssd_and_gradient
from caio.transforms import world
from caio.transforms.world import Grid

log = logging.getLogger(__name__)

MODELS = ("rigid", "affine")
SIMILARITIES = ("lncc", "lncc2", "mind")
RIGID_PARAMETERS = 6
AFFINE_PARAMETERS = 12


@dataclass(frozen=True)
class AffineConfig:
    """Settings of :func:`register_affine`.

    Attributes:
        spacings_mm: voxel size of each pyramid level, coarse to fine. The 2 mm level (20 iterations) lifted the
            affine stage's Dice on the tuning pairs (2 mm IXI heads s10-s12) from 0.489 to 0.498, past Greedy's
            affine (0.493), with the final Dice unchanged (docs/measurements.md, "A faster affine step and a 2 mm
            level").
        iterations: Adam iterations per level (the affine stage's).
        rigid_iterations: rigid iterations on the coarsest level before the affine stage (``model="affine"``).
        learning_rates: Adam step per level (unitless parameters, see the module docstring).
        lncc_radius: LNCC window half-width in voxels of the level.
        lncc_eps: LNCC flat-window regulariser (:func:`caio.similarity.lncc.lncc_and_gradient`'s default).
        mind_radius, mind_dilation: MIND-SSC patch half-width and neighbour distance (voxels of the level).
        principal_axes: also try principal-axes initialisations.
        patience, tolerance: a level ends early when its best similarity has not risen by ``tolerance`` in
            ``patience`` iterations.
        min_level_size: fewest voxels per axis of a pyramid level.
    """

    spacings_mm: tuple[float, ...] = (6.0, 3.0, 2.0)
    iterations: tuple[int, ...] = (120, 30, 20)
    rigid_iterations: int = 80
    learning_rates: tuple[float, ...] = (0.02, 0.005, 0.002)
    lncc_radius: int = 2
    lncc_eps: float = 1e-4
    mind_radius: int = 1
    mind_dilation: int = 2
    principal_axes: bool = False
    patience: int = 15
    tolerance: float = 1e-5
    min_level_size: int = 8


@dataclass
class AffineTrace:
    """What :func:`register_affine` did: similarity at the finest level reached with the headers' alignment
    (``before``) and with the result (``after``), higher is better."""

    model: str
    similarity: str
    initialisation: str
    before: float = float("nan")
    after: float = float("nan")
    iterations: int = 0
    seconds: float = 0.0
    stopped_by_deadline: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Frame:
    """What turns the 12 unitless parameters into a world transform (see the module docstring)."""

    fixed_centre: np.ndarray
    moving_centre: np.ndarray
    basis: np.ndarray
    radius: float

    def matrix(self, theta: torch.Tensor) -> torch.Tensor:
        """4x4 float64 world transform (differentiable in ``theta``, shape ``(12,)``)."""
        rot, trans, log_scale, shear = theta[:3], theta[3:6], theta[6:9], theta[9:12]
        zero = theta.new_zeros(())
        skew = torch.stack(
            [
                torch.stack([zero, -rot[2], rot[1]]),
                torch.stack([rot[2], zero, -rot[0]]),
                torch.stack([-rot[1], rot[0], zero]),
            ]  # fmt: skip
        )
        upper = torch.stack(
            [
                torch.stack([zero, shear[0], shear[1]]),
                torch.stack([zero, zero, shear[2]]),
                torch.stack([zero, zero, zero]),
            ]  # fmt: skip
        )
        eye = torch.eye(3, dtype=theta.dtype)
        linear = torch.linalg.matrix_exp(skew) @ (eye + upper) @ torch.diag(torch.exp(log_scale))
        linear = linear @ torch.from_numpy(self.basis)
        centre_f, centre_m = torch.from_numpy(self.fixed_centre), torch.from_numpy(self.moving_centre)
        offset = centre_m + self.radius * trans - linear @ centre_f
        top = torch.cat([linear, offset[:, None]], dim=1)
        return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=theta.dtype)], dim=0)


class _Level:
    """One pyramid level: features of both images on their own grids and the similarity of a world transform.

    The gradient with respect to the transform is analytic up to the 4x4 matrix: the similarity's gradient with
    respect to the warped image times the moving image's spatial gradient (sampled with it) gives the gradient
    with respect to the sampling coordinates, and these are linear in the voxel-to-voxel matrix. Only the small
    map from the 12 parameters to the matrix goes through autograd (backpropagating through ``grid_sample``
    itself is several times slower on a CPU).
    """

    def __init__(self, fixed: Grid, moving: Grid, fixed_weight, moving_weight, similarity: str, config):
        self.similarity, self.config = similarity, config
        self.fixed_affine = torch.from_numpy(fixed.affine)
        self.moving_inverse = torch.from_numpy(np.linalg.inv(moving.affine))
        self.fixed_features = self._features(fixed.image)
        features = self._features(moving.image)
        gradients = torch.cat([torch.stack(torch.gradient(f, dim=(0, 1, 2)), dim=0) for f in features[0]])[None]
        self.channels = features.shape[1]
        self.moving_stack = torch.cat([features, gradients, moving_weight], dim=1).contiguous()
        self.fixed_weight = fixed_weight
        self.index = spatial.identity_grid(fixed.shape)
        self.work = Workspace()  # scratch arrays of the sampling and the fused LNCC, reused every iteration

    def _features(self, image: torch.Tensor) -> torch.Tensor:
        if self.similarity == "mind":
            return mind_ssc(image, radius=self.config.mind_radius, dilation=self.config.mind_dilation)
        return normalize_intensity(image)

    def sample(self, voxel: torch.Tensor) -> torch.Tensor:
        """``[1, C, D0, D1, D2]``: the moving stack (features, their gradients, the weight) at every fixed voxel's
        moving voxel ``voxel @ x`` (``voxel``: 4x4), zero outside the moving grid."""
        shape = (self.moving_stack.shape[1], *self.index.shape[2:])
        out = self.work.get("sampled", shape)
        sample_through_matrix(self.moving_stack[0].numpy(), np.ascontiguousarray(voxel[:3].numpy()), out)
        return torch.from_numpy(out)[None]

    def evaluate(self, transform: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(similarity, surrogate)``: ``surrogate.backward()`` gives the gradient of ``-similarity`` with
        respect to whatever ``transform`` (4x4 float64 world transform) was computed from."""
        with torch.no_grad():
            voxel = self.moving_inverse @ transform.detach() @ self.fixed_affine
            sampled = self.sample(voxel)
            c = self.channels
            warped, gradients, inside = sampled[:, :c], sampled[:, c : 4 * c], sampled[:, 4 * c :]
            weight = self.fixed_weight * inside
            fixed, moved = self.fixed_features * weight, warped * weight
            if self.similarity == "mind":
                value, grad = ssd_and_gradient(fixed, moved)
            else:
                value, image_gradient = lncc_image_gradient(
                    fixed[0, 0].contiguous().numpy(), moved[0, 0].contiguous().numpy(), self.config.lncc_radius,
                    self.config.lncc_eps, self.similarity == "lncc2", self.work,
                )  # fmt: skip
                grad = torch.from_numpy(image_gradient)[None, None]
            grad = grad * weight  # d similarity / d warped, [1, C, D0, D1, D2]
            shape = gradients.shape[2:]
            d_coords = (grad[:, :, None] * gradients.view(1, c, 3, *shape)).sum(dim=1)  # [1, 3, D0, D1, D2]
            d_voxel = torch.zeros(4, 4, dtype=torch.float64)
            d_voxel[:3, :3] = torch.einsum("bixyz,bjxyz->ij", d_coords, self.index).double()
            d_voxel[:3, 3] = d_coords.sum(dim=(0, 2, 3, 4)).double()
            d_transform = self.moving_inverse.T @ d_voxel @ self.fixed_affine.T
        return value, -(transform * d_transform).sum()


def _as_volume(image, what: str) -> torch.Tensor:
    """``[1, 1, D0, D1, D2]`` float32, C-contiguous, from a ``(D0, D1, D2)`` array or a 5-D tensor (arrays that
    nibabel reads are Fortran-ordered: every later operation on such strides is several times slower)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, np.float32)) if not torch.is_tensor(image) else image.float()
    while tensor.dim() < 5:
        tensor = tensor[None]
    if tensor.shape[:2] != (1, 1):
        raise ValueError(f"{what} must be (D0, D1, D2) or [1, 1, D0, D1, D2], got {tuple(tensor.shape)}")
    return tensor.detach().cpu().contiguous()


def _pyramid(image, affine, mask, config: AffineConfig) -> list[tuple[Grid, torch.Tensor]]:
    """``(image level, weight level)`` per spacing; the weight is the mask (or ones), resampled alike."""
    volume = _as_volume(image, "image")
    weight = torch.ones_like(volume) if mask is None else _as_volume(mask, "mask").gt(0).float()
    base = Grid(volume * weight, np.asarray(affine, np.float64))  # masked-out content never enters a level
    levels = []
    for spacing in config.spacings_mm:
        level = world.downsample(base, spacing, config.min_level_size)
        levels.append((level, world.antialiased_resize(weight, level.shape)))
    return levels


def _frames(fixed, fixed_affine, moving, moving_affine, fixed_mask, moving_mask, config) -> dict[str, _Frame]:
    """Candidate initialisations: ``header`` (identity), ``moments`` (centres of mass), ``axes-k``."""
    f = np.asarray(_as_volume(fixed, "fixed")[0, 0]) * (1.0 if fixed_mask is None else np.asarray(fixed_mask) > 0)
    m = np.asarray(_as_volume(moving, "moving")[0, 0]) * (1.0 if moving_mask is None else np.asarray(moving_mask) > 0)
    moments_f, moments_m = world.intensity_moments(f, fixed_affine), world.intensity_moments(m, moving_affine)
    centre_f, centre_m = moments_f.centre, moments_m.centre
    radius = float(np.sqrt(max(np.trace(moments_f.covariance), 0.0)))  # radius of gyration (mm)
    radius = radius if radius > 1e-3 else 1.0
    frames = {
        "header": _Frame(centre_f, centre_f.copy(), np.eye(3), radius),
        "moments": _Frame(centre_f, centre_m, np.eye(3), radius),
    }
    if config.principal_axes:
        axes_f, axes_m = world.principal_axes(moments_f), world.principal_axes(moments_m)
        for k, flip in enumerate(world.axis_sign_flips()):
            frames[f"axes-{k}"] = _Frame(centre_f, centre_m, axes_m @ flip @ axes_f.T, radius)
    return frames


class _Adam:
    """Adam (Kingma & Ba; PyTorch's defaults: betas 0.9 / 0.999, eps 1e-8, no weight decay) on one parameter
    tensor, written out because ``torch.optim`` imports ``torch._dynamo`` on first use: 1.0 s of a ``caio
    register`` call on 2 cores, for 12 parameters."""

    def __init__(self, theta: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.theta, self.betas, self.eps, self.steps = theta, betas, eps, 0
        self.mean = torch.zeros_like(theta, requires_grad=False)
        self.square = torch.zeros_like(theta, requires_grad=False)

    @torch.no_grad()
    def step(self, lr: float) -> None:
        (b1, b2), grad = self.betas, self.theta.grad
        self.steps += 1
        self.mean.mul_(b1).add_(grad, alpha=1 - b1)
        self.square.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        corrected = self.square / (1 - b2**self.steps)
        self.theta.sub_(lr / (1 - b1**self.steps) * self.mean / (corrected.sqrt() + self.eps))


def _optimise(level: _Level, frame: _Frame, theta: torch.Tensor, active: int, steps: int, lr: float, deadline, config):
    """Adam on the first ``active`` parameters; returns ``(best theta, best similarity, iterations, stopped)``."""
    theta = theta.clone().requires_grad_(True)
    optimiser = _Adam(theta)
    keep = torch.zeros(AFFINE_PARAMETERS, dtype=theta.dtype)
    keep[:active] = 1.0
    best, best_value, done, last_gain = theta.detach().clone(), -float("inf"), 0, 0
    for step in range(steps):
        if step - last_gain > config.patience:
            break
        if deadline is not None and time.monotonic() >= deadline:
            return best, best_value, done, True
        theta.grad = None
        value, surrogate = level.evaluate(frame.matrix(theta))
        if value > best_value:
            if value > best_value + config.tolerance:
                last_gain = step
            best, best_value = theta.detach().clone(), value
        surrogate.backward()
        theta.grad *= keep
        optimiser.step(lr * (1.0 - 0.8 * step / max(steps, 1)))
        done += 1
    return best, best_value, done, False


def _level(pair, similarity: str, config: AffineConfig) -> _Level:
    (fixed, fixed_weight), (moving, moving_weight) = pair
    return _Level(fixed, moving, fixed_weight, moving_weight, similarity, config)


def _shapes(pair) -> tuple:
    (fixed, _), _ = pair
    return fixed.shape


def register_affine(
    fixed,
    fixed_affine: np.ndarray,
    moving,
    moving_affine: np.ndarray,
    *,
    model: str = "affine",
    similarity: str = "lncc",
    fixed_mask=None,
    moving_mask=None,
    deadline: float | None = None,
    config: AffineConfig = AffineConfig(),
) -> tuple[np.ndarray, AffineTrace]:
    """Find the world transform that aligns ``moving`` to ``fixed`` (rigid or affine).

    Args:
        fixed, moving: ``(D0, D1, D2)`` arrays or ``[1, 1, D0, D1, D2]`` tensors (any intensity scale), each on its
            own grid.
        fixed_affine, moving_affine: 4x4 voxel-to-world affines (NIfTI, RAS mm).
        model: ``"rigid"`` (6 parameters) or ``"affine"`` (12).
        similarity: ``"lncc"``, ``"lncc2"`` or ``"mind"`` (see the module docstring).
        fixed_mask, moving_mask: ``(D0, D1, D2)`` arrays on the image's grid (non-zero: seen), or ``None``.
        deadline: absolute ``time.monotonic()`` after which the best transform so far is returned.
    Returns:
        ``(T, trace)``: ``T`` 4x4 float64 maps fixed world (mm) to moving world (``warped(p) = moving(T p)``).
    """
    if model not in MODELS:
        raise ValueError(f"model '{model}' is not one of {', '.join(MODELS)}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity '{similarity}' is not one of {', '.join(SIMILARITIES)}")
    if not (len(config.spacings_mm) == len(config.iterations) == len(config.learning_rates)):
        raise ValueError("AffineConfig: spacings_mm, iterations and learning_rates need one entry per level")
    start = time.monotonic()
    fixed_levels = [world.crop_to_content(*level, margin=config.lncc_radius + 2) for level in
                    _pyramid(fixed, fixed_affine, fixed_mask, config)]  # fmt: skip
    moving_levels = _pyramid(moving, moving_affine, moving_mask, config)
    if similarity == "mind":
        moving_levels = [world.along_axes_of(m, w, f.affine) for (m, w), (f, _) in zip(moving_levels, fixed_levels)]
    frames = _frames(fixed, fixed_affine, moving, moving_affine, fixed_mask, moving_mask, config)
    theta = torch.zeros(AFFINE_PARAMETERS, dtype=torch.float64)
    pairs = list(zip(fixed_levels, moving_levels))
    kept = [i for i, ((f, _), (m, _)) in enumerate(pairs) if i == 0 or (f.shape, m.shape) != _shapes(pairs[i - 1])]
    levels = {
        i: _level(pairs[i], similarity, config) for i in kept
    }  # a fixed level no finer than the previous is left out
    with torch.no_grad():
        scores = {name: levels[0].evaluate(frame.matrix(theta))[0] for name, frame in frames.items()}
    name = max(scores, key=scores.get)
    frame = frames[name]
    trace = AffineTrace(model=model, similarity=similarity, initialisation=name)
    active = RIGID_PARAMETERS if model == "rigid" else AFFINE_PARAMETERS
    stages = [(0, RIGID_PARAMETERS, config.rigid_iterations)] if model == "affine" else []
    stages += [(index, active, steps) for index, steps in enumerate(config.iterations) if index in levels]
    finest = 0
    for index, parameters, steps in stages:
        if steps <= 0:
            continue
        lr = config.learning_rates[index]
        theta, _, done, stopped = _optimise(levels[index], frame, theta, parameters, steps, lr, deadline, config)
        trace.iterations += done
        finest = index if done > 0 else finest
        if stopped:
            trace.stopped_by_deadline = True
            break
    with torch.no_grad():
        result = frame.matrix(theta).numpy()
        trace.before = levels[finest].evaluate(torch.eye(4, dtype=torch.float64))[0]
        trace.after = levels[finest].evaluate(torch.from_numpy(result))[0]
    trace.seconds = time.monotonic() - start
    log.info(
        "affine (%s, %s, start %s): similarity %.4f -> %.4f, %d iterations, %.1f s",
        model, similarity, name, trace.before, trace.after, trace.iterations, trace.seconds,
    )  # fmt: skip
    return result, trace
