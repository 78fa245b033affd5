"""The engine's iteration building blocks on the CPU, through the fused kernels of
:mod:`caio.kernels` (same interface as :class:`caio.engine.optimizer.TorchKernels`).

Tensors are ``[1, C, D0, D1, D2]`` float32 on the CPU; they are shared with NumPy without copies.
"""

from __future__ import annotations

import numpy as np
import torch

from caio import spatial
from caio.engine.optimizer import OUTLIER_QUANTILE, LevelSettings
from caio.kernels import fields, filters
from caio.kernels import similarity as similarity_kernels


def _array(x: torch.Tensor) -> np.ndarray:
    """``[1, C, ...]`` CPU tensor -> contiguous float32 ``(C, ...)`` array (no copy when possible)."""
    return np.ascontiguousarray(x.detach()[0].to("cpu", torch.float32).numpy())


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)[None]


class NumbaKernels:
    """LNCC (``similarity="lncc"``) or feature SSD (``"mind"``) on the CPU.

    Args:
        similarity: ``"lncc"`` or ``"mind"``.
        radius: LNCC window half-width (voxels).
        eps: LNCC flat-window regulariser.
        robust: Geman-McClure scale of the feature SSD (:func:`caio.similarity.ssd.ssd_and_gradient`; 0: plain).
    """

    def __init__(
        self, similarity: str, radius: int = 2, eps: float = 1e-3, warped_gradient: bool = False, robust: float = 0.0
    ) -> None:
        if similarity not in ("lncc", "lncc2", "mind"):
            raise ValueError(f"unknown similarity '{similarity}'")
        self.kind, self.radius, self.eps, self.warped_gradient = similarity, radius, eps, warped_gradient
        self.robust = robust
        self.work = filters.Workspace()
        self._channel_last: tuple[torch.Tensor, np.ndarray] | None = None

    def _moving_channel_last(self, moving: torch.Tensor) -> np.ndarray:
        """``moving`` ``[1, C, ...]`` as a channel-last ``(D0, D1, D2, C)`` array, transposed once per image
        (a level calls this every iteration with the same tensor; the reference kept makes ``is`` safe)."""
        if self._channel_last is None or self._channel_last[0] is not moving:
            self._channel_last = (moving, np.ascontiguousarray(_array(moving).transpose(1, 2, 3, 0)))
        return self._channel_last[1]

    def similarity_field(
        self, fixed: torch.Tensor, moving: torch.Tensor, disp: torch.Tensor
    ) -> tuple[float, torch.Tensor]:
        """Similarity of ``moving`` warped by ``disp`` and its ascent direction ``[1, 3, ...]`` (a workspace
        array: valid until the next call)."""
        if self.kind in ("lncc", "lncc2"):
            sim, field = similarity_kernels.lncc_displacement_gradient(
                _array(fixed)[0],
                _array(moving)[0],
                _array(disp),
                self.radius,
                self.eps,
                self.kind == "lncc2",
                self.warped_gradient,
                self.work,
            )
        else:
            field_shape = (3, *moving.shape[2:])
            sim, field = similarity_kernels.ssd_displacement_gradient(
                _array(fixed),
                self._moving_channel_last(moving),
                _array(disp),
                self.work.get("field", field_shape),
                self.robust,
            )
        return sim, _tensor(field)

    def smooth(self, image: torch.Tensor, sigma: float) -> torch.Tensor:
        """Gaussian blur (replicate padding), as :func:`caio.spatial.gaussian_blur`."""
        return _tensor(filters.separable_filter(_array(image), _gaussian(sigma), True))

    def warp(self, image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        """``image`` ``[1, 1, ...]`` warped by ``disp`` ``[1, 3, ...]`` (:func:`caio.spatial.warp`, trilinear,
        border clamp) in one fused pass into the workspace (its arrays ``"warped"`` and ``"gradient"``, which a
        level on the same grid reuses): valid until the next call. At 1 mm it replaces ``grid_sample`` and the
        half-dozen full-size temporaries of its coordinate grid (0.2 s and about 0.3 GB of fresh pages, which
        cost as much again in page faults)."""
        shape = tuple(disp.shape[2:])
        warped = self.work.get("warped", (1, *shape))
        fields.warp_with_gradient(_array(image), _array(disp), warped, self.work.get("gradient", (1, 3, *shape)))
        return _tensor(warped)

    def update(
        self, disp: torch.Tensor, gradient: torch.Tensor, settings: LevelSettings, spare: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Same step as :meth:`caio.engine.optimizer.TorchKernels.update`, without PyTorch
        operations (whose thread pool would compete with Numba's on a small CPU). The new field is written into
        ``spare`` when it fits (a full-size allocation per iteration costs its page faults: 10-30 % of an
        iteration at 1 mm)."""
        g = _array(gradient)
        if settings.sigma_update > 0:
            g = filters.separable_filter(
                g, _gaussian(settings.sigma_update), True, self.work.get("update", g.shape), self.work
            )
        if settings.quantile < 1.0:
            fields.scale_to_quantile_norm(g, settings.step, settings.quantile, settings.clamp)
        elif settings.outlier_ratio is not None:
            fields.scale_to_robust_max_norm(g, settings.step, OUTLIER_QUANTILE, settings.outlier_ratio)
        else:
            fields.scale_to_max_norm(g, settings.step)
        u = _array(disp)
        smooth = settings.sigma_field > 0
        # the new field is ``spare`` or a fresh array, never a workspace one (the optimiser may keep it as the best)
        fits = spare is not None and tuple(spare.shape[1:]) == u.shape and spare.dtype == torch.float32
        dest = spare[0].numpy() if fits and spare.is_contiguous() else np.empty_like(u)
        out = self.work.get("composed", u.shape) if smooth else dest
        if settings.compose:
            fields.compose_fields(u, g, out)
        else:
            np.add(u, g, out=out)
        if smooth:
            filters.separable_filter(out, _gaussian(settings.sigma_field), True, out=dest, work=self.work)
        return _tensor(dest)


def _gaussian(sigma: float) -> np.ndarray:
    return spatial.gaussian_kernel1d(sigma).numpy()
