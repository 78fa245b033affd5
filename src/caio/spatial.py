"""Spatial conventions of caio: the one module that knows how coordinates work.

Convention (identical to the LUMIR evaluator, i.e. ``scipy.ndimage.map_coordinates``):

* Tensors are laid out ``[B, C, D0, D1, D2]``; ``Dk`` is array axis ``k`` of the NIfTI file
  (for LUMIR: 160, 224, 192). No axis is ever reordered when reading a file.
* ``disp`` is a displacement field ``[B, 3, D0, D1, D2]`` **in voxels** on the **fixed**
  grid; channel ``c`` moves along array axis ``c``.
* Pull-back: ``warped(x) = moving(x + disp(x))``. ``grid = identity + disp`` holds the
  absolute voxel coordinates in the moving image at which each fixed voxel samples.
* Composition ``compose(u, v)`` is the map ``x -> x + v(x) + u(x + v(x))``: warping
  by it equals warping by ``u`` first and then warping that result by ``v``
  (``warp(warp(m, u), v) == warp(m, compose(u, v))``).
* Resampling uses ``torch.nn.functional.grid_sample`` with ``align_corners=True``: voxel
  centre ``i`` of an axis of size ``n`` sits at normalised coordinate ``2 i / (n - 1) - 1``.
  Only :func:`voxel_to_normalized` converts to that space and reverses the channel order
  (``grid_sample`` wants the last array axis first); nothing else in caio may do so.
* Resizing a displacement field between resolutions rescales its values by
  ``(n_new - 1) / (n_old - 1)`` per axis, consistent with ``align_corners=True``.

The NumPy functions at the end (:func:`warp_labels_nearest`) mirror the official evaluator in
float64 and are what :mod:`caio.metrics.evaluate` uses; the non-diffeomorphic volume built on
them is in :mod:`caio.metrics.ndv`. Grid-ratio arithmetic (coarser grids, per-axis scales)
goes through :func:`scaled_shape` and :func:`grid_scale`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

ALIGN_CORNERS = True
"""``grid_sample``/``interpolate`` corner convention used everywhere in caio."""


def identity_grid(
    shape: Sequence[int], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Voxel coordinates of every voxel.

    Args:
        shape: spatial shape ``(D0, D1, D2)``.
    Returns:
        ``[1, 3, D0, D1, D2]`` tensor; channel ``c`` holds the index along axis ``c``.
    """
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)[None]


def check_image_pair(fixed: torch.Tensor, moving: torch.Tensor, finite: bool = False) -> None:
    """Raise ``ValueError`` unless both images are ``[1, 1, D0, D1, D2]`` on the same grid
    (and, with ``finite``, free of NaN and infinite values)."""
    for name, image in (("fixed", fixed), ("moving", moving)):
        if image.dim() != 5 or image.shape[:2] != (1, 1):
            raise ValueError(f"{name} must be [1, 1, D0, D1, D2], got {tuple(image.shape)}")
        if finite and not torch.isfinite(image).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} must share a grid")


def voxel_to_normalized(grid: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Voxel coordinates to ``grid_sample`` coordinates.

    Args:
        grid: ``[B, 3, D0, D1, D2]`` absolute voxel coordinates (channel c along axis c).
        shape: spatial shape ``(M0, M1, M2)`` of the image the coordinates point into.
    Returns:
        ``[B, D0, D1, D2, 3]`` in [-1, 1] (``align_corners=True``), last dim ordered
        (axis 2, axis 1, axis 0) as ``grid_sample`` expects.
    """
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=grid.device, dtype=grid.dtype)
    norm = grid * scale.view(1, 3, 1, 1, 1) - 1.0
    return norm.permute(0, 2, 3, 4, 1).flip(-1)


def sample(
    image: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border"
) -> torch.Tensor:
    """Sample ``image`` at absolute voxel coordinates ``grid``.

    Args:
        image: ``[B, C, M0, M1, M2]`` moving image (any float dtype).
        grid: ``[B, 3, D0, D1, D2]`` voxel coordinates in ``image``; may have another
            spatial size than ``image``.
        mode: ``"bilinear"`` (trilinear) or ``"nearest"``.
        padding_mode: ``"border"`` (edge value), ``"zeros"`` or ``"reflection"``.
    Returns:
        ``[B, C, D0, D1, D2]``.
    """
    if grid.shape[1] != 3 or grid.dim() != 5:
        raise ValueError(f"grid must be [B, 3, D0, D1, D2], got {tuple(grid.shape)}")
    norm = voxel_to_normalized(grid, image.shape[2:])
    return F.grid_sample(image, norm.to(image.dtype), mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)


def warp(image: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border") -> torch.Tensor:
    """Pull-back warp: ``warped(x) = image(x + disp(x))``.

    Args:
        image: ``[B, C, D0, D1, D2]`` moving image, on the same grid as ``disp``.
        disp: ``[B, 3, D0, D1, D2]`` displacement in voxels.
        mode: ``"bilinear"`` or ``"nearest"``.
        padding_mode: what samples outside the volume get (see :func:`sample`).
    Returns:
        ``[B, C, D0, D1, D2]`` warped image.
    """
    if disp.shape[2:] != image.shape[2:]:
        raise ValueError(f"image {tuple(image.shape)} and disp {tuple(disp.shape)} must share a grid")
    grid = identity_grid(disp.shape[2:], disp.device, disp.dtype) + disp
    return sample(image, grid, mode=mode, padding_mode=padding_mode)


def compose(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Displacement of ``x -> x + v(x) + u(x + v(x))`` (apply ``v``'s coordinates to ``u``).

    ``warp(warp(moving, u), v) == warp(moving, compose(u, v))`` up to interpolation.
    In the cascade, ``u`` is the field so far and ``v`` the new residual.

    Args:
        u, v: ``[B, 3, D0, D1, D2]`` displacements in voxels on the same grid.
    Returns:
        ``[B, 3, D0, D1, D2]``.
    """
    return v + warp(u, v, mode="bilinear", padding_mode="border")


def grid_scale(new_shape: Sequence[int], old_shape: Sequence[int]) -> list[float]:
    """Per-axis factor ``(n_new - 1) / (n_old - 1)`` that takes voxel coordinates (or
    displacements) of the old grid to the new one over the same field of view (align_corners)."""
    return [(n - 1) / max(o - 1, 1) for n, o in zip(new_shape, old_shape)]


def scaled_shape(shape: Sequence[int], factor: float, minimum: int = 1) -> tuple[int, ...]:
    """Shape of a grid ``factor`` times coarser (finer for ``factor < 1``) over the same field of
    view: ``round((n - 1) / factor) + 1`` per axis (align_corners), at least ``minimum``."""
    return tuple(max(minimum, int(round((n - 1) / factor)) + 1) for n in shape)


def resize_displacement(disp: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a displacement field to another grid over the same field of view.

    Values are rescaled so that they stay in voxels of the new grid:
    ``u_new = u_old * (n_new - 1) / (n_old - 1)`` per axis (``align_corners=True``).

    Args:
        disp: ``[B, 3, D0, D1, D2]`` in voxels of the old grid.
        shape: new spatial shape.
    Returns:
        ``[B, 3, *shape]`` in voxels of the new grid.
    """
    old = disp.shape[2:]
    shape = tuple(int(n) for n in shape)
    if tuple(old) == shape:
        return disp
    out = F.interpolate(disp, size=shape, mode="trilinear", align_corners=ALIGN_CORNERS)
    scale = torch.tensor(grid_scale(shape, old), device=disp.device, dtype=disp.dtype)
    return out * scale.view(1, 3, 1, 1, 1)


def resize_image(image: torch.Tensor, shape: Sequence[int], antialias: bool = True) -> torch.Tensor:
    """Resample an image to another grid over the same field of view (``align_corners=True``).

    When shrinking and ``antialias`` is set, a Gaussian with ``sigma = 0.5 * factor`` voxels
    (per axis) is applied first so that the result is not aliased.

    Args:
        image: ``[B, C, D0, D1, D2]``.
        shape: new spatial shape.
    Returns:
        ``[B, C, *shape]``.
    """
    old = image.shape[2:]
    shape = tuple(int(n) for n in shape)
    if tuple(old) == shape:
        return image
    if antialias:
        image = gaussian_blur(image, antialias_sigmas(old, shape))
    return F.interpolate(image, size=shape, mode="trilinear", align_corners=ALIGN_CORNERS)


def antialias_sigmas(old_shape: Sequence[int], new_shape: Sequence[int]) -> list[float]:
    """Gaussian sigma (voxels of ``old_shape``) per axis that :func:`resize_image` blurs with before shrinking:
    ``0.5 * factor`` along each shrinking axis, 0 along the others."""
    scales = grid_scale(old_shape, new_shape)
    return [0.5 * s if n < o else 0.0 for s, n, o in zip(scales, new_shape, old_shape)]


def gaussian_kernel1d(
    sigma: float, dtype: torch.dtype = torch.float32, device=None, truncate: float = 3.0
) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` voxels, radius ``ceil(truncate*sigma)``."""
    radius = max(int(np.ceil(truncate * sigma)), 1)
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(image: torch.Tensor, sigma: float | Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur with replicate padding.

    Args:
        image: ``[B, C, D0, D1, D2]``.
        sigma: standard deviation in voxels, one value or one per axis (0 skips an axis).
    Returns:
        Blurred image, same shape.
    """
    sigmas = [float(sigma)] * 3 if np.isscalar(sigma) else [float(s) for s in sigma]
    channels = image.shape[1]
    out = image
    for axis, s in enumerate(sigmas):
        if s <= 0:
            continue
        k = gaussian_kernel1d(s, image.dtype, image.device)
        r = (k.numel() - 1) // 2
        view = [1, 1, 1]
        view[axis] = k.numel()
        weight = k.view(1, 1, *view).repeat(channels, 1, 1, 1, 1)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = r
        pad[2 * (2 - axis) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out


def jacobian_determinant(disp: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant of ``x -> x + disp(x)`` by central differences (one-sided at edges).

    Args:
        disp: ``[B, 3, D0, D1, D2]`` in voxels.
    Returns:
        ``[B, D0, D1, D2]``; 1 for the identity, <= 0 where the map folds.
    """
    grads = torch.gradient(disp, dim=(2, 3, 4))  # grads[k][:, c] = d disp_c / d x_k
    jac = torch.stack([torch.stack([g[:, c] for g in grads], dim=-1) for c in range(3)], dim=-2)
    jac = jac + torch.eye(3, dtype=disp.dtype, device=disp.device)
    return torch.linalg.det(jac)


# ----------------------------------------------------------------------------------------
# NumPy mirrors of the evaluator (float64, channel-first (3, D0, D1, D2) fields)
# ----------------------------------------------------------------------------------------


def identity_grid_np(shape: Sequence[int]) -> np.ndarray:
    """``(3, D0, D1, D2)`` float64 voxel coordinates ('ij' indexing)."""
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))


def warp_labels_nearest(labels: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """Nearest-neighbour pull-back of a label map exactly as the evaluator does it.

    Mirrors ``map_coordinates(labels, identity + disp, order=0, mode='constant', cval=0)``:
    a coordinate ``x`` on an axis of size ``n`` is outside when ``x < 0`` or ``x > n - 1``
    (the sample is then 0); otherwise the index is ``floor(x + 0.5)`` (ties go up).

    Args:
        labels: ``(M0, M1, M2)`` integer label map of the moving image.
        disp: ``(3, D0, D1, D2)`` displacement in voxels on the fixed grid.
    Returns:
        ``(D0, D1, D2)`` warped labels, dtype of ``labels``.
    """
    coords = identity_grid_np(disp.shape[1:]) + disp.astype(np.float64)
    inside = np.ones(disp.shape[1:], dtype=bool)
    index = []
    for c, n in enumerate(labels.shape):
        x = coords[c]
        inside &= (x >= 0) & (x <= n - 1)
        index.append(np.clip(np.floor(x + 0.5), 0, n - 1).astype(np.intp))
    out = labels[tuple(index)]
    return np.where(inside, out, np.zeros((), dtype=labels.dtype))


# ----------------------------------------------------------------------------------------
# Inverse of a displacement field
# ----------------------------------------------------------------------------------------


def inverse_consistency_error(
    disp: torch.Tensor, inverse: torch.Tensor, spacing: Sequence[float] | None = None
) -> torch.Tensor:
    """How far ``x -> x + disp(x)`` followed by ``inverse`` lands from ``x``, per voxel.

    The residual is ``disp(x) + inverse(x + disp(x))`` (``compose(inverse, disp)``): zero for an exact inverse.

    Args:
        disp, inverse: ``[B, 3, D0, D1, D2]`` displacements in voxels on the same grid.
        spacing: voxel size per axis (mm) to measure in mm (exact for grids whose axes are orthogonal);
            ``None``: voxels.
    Returns:
        ``[B, D0, D1, D2]`` residual length.
    """
    residual = compose(inverse, disp)
    if spacing is not None:
        scale = torch.tensor([float(s) for s in spacing], dtype=residual.dtype, device=residual.device)
        residual = residual * scale.view(1, 3, 1, 1, 1)
    return residual.norm(dim=1)
