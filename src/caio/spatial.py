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

The NumPy functions at the end (:func:`warp_labels_nearest`, :func:`ndv_percent`) mirror the
official evaluator in float64 and are what :mod:`caio.evaluate` uses.
"""

from __future__ import annotations

from typing import Sequence

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
    return F.grid_sample(image, norm.to(image.dtype), mode=mode, padding_mode=padding_mode,
                         align_corners=ALIGN_CORNERS)


def warp(
    image: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border"
) -> torch.Tensor:
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
    scale = torch.tensor([(n - 1) / max(o - 1, 1) for n, o in zip(shape, old)], device=disp.device, dtype=disp.dtype)
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
        sigmas = [0.5 * (o - 1) / max(n - 1, 1) if n < o else 0.0 for n, o in zip(shape, old)]
        image = gaussian_blur(image, sigmas)
    return F.interpolate(image, size=shape, mode="trilinear", align_corners=ALIGN_CORNERS)


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32, device=None, truncate: float = 3.0) -> torch.Tensor:
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


def _shift(a: np.ndarray, offsets: Sequence[int]) -> np.ndarray:
    """``a[..., p + offsets]`` with edge replication (scipy 'nearest') on the last 3 axes."""
    pad = [(0, 0)] * (a.ndim - 3) + [(1, 1)] * 3
    padded = np.pad(a, pad, mode="edge")
    sl = tuple(slice(1 + o, 1 + o + n) for o, n in zip(offsets, a.shape[-3:]))
    return padded[(Ellipsis,) + sl]


def _det3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Determinant of the 3x3 matrix with columns a, b, c (each ``(3, ...)``)."""
    return (a[0] * (b[1] * c[2] - b[2] * c[1])
            - b[0] * (a[1] * c[2] - a[2] * c[1])
            + c[0] * (a[1] * b[2] - a[2] * b[1]))


def tetrahedral_jacobians(disp: np.ndarray) -> list[np.ndarray]:
    """The 10 finite-difference Jacobian determinants of Liu et al. (IJCV 2024).

    Eight one-sided schemes (forward or backward difference chosen per axis) and the two
    central tetrahedra of the two 5-tetrahedra cube decompositions (each 2 for the
    identity). Boundaries replicate the edge voxel.

    Args:
        disp: ``(3, D0, D1, D2)`` float displacement in voxels.
    Returns:
        list of 10 arrays ``(D0, D1, D2)``.
    """
    t = identity_grid_np(disp.shape[1:]) + disp.astype(np.float64)
    e = np.eye(3, dtype=int)
    dets = []
    for signs in np.ndindex(2, 2, 2):
        cols = []
        for k, s in enumerate(signs):
            if s == 0:  # forward difference
                cols.append(_shift(t, e[k]) - t)
            else:  # backward difference
                cols.append(t - _shift(t, -e[k]))
        dets.append(_det3(*cols))
    dets.append(_det3(_shift(t, -e[0] - e[1]) - t, _shift(t, -e[0] - e[2]) - t, _shift(t, -e[1] - e[2]) - t))
    dets.append(_det3(_shift(t, e[0] + e[1]) - t, _shift(t, e[1] + e[2]) - t, _shift(t, e[0] + e[2]) - t))
    return dets


def _interior_difference(disp: np.ndarray, rows: slice, offset: Sequence[int]) -> np.ndarray:
    """``T(p + offset) - T(p)`` with ``T = identity + disp`` for the interior voxels ``p``.

    ``p`` runs over the 1-voxel-cropped grid, rows ``rows`` of axis 0 (crop coordinates);
    ``offset`` has entries in {-1, 0, 1}, so every neighbour lies inside the volume.
    """
    n1, n2 = disp.shape[2], disp.shape[3]
    here = (slice(None), slice(rows.start + 1, rows.stop + 1), slice(1, n1 - 1), slice(1, n2 - 1))
    there = (slice(None), slice(rows.start + 1 + offset[0], rows.stop + 1 + offset[0]),
             slice(1 + offset[1], n1 - 1 + offset[1]), slice(1 + offset[2], n2 - 1 + offset[2]))
    return disp[there] - disp[here] + np.asarray(offset, dtype=np.float64).reshape(3, 1, 1, 1)


def _interior_jacobians(disp: np.ndarray, rows: slice) -> list[np.ndarray]:
    """The 10 schemes of :func:`tetrahedral_jacobians`, on interior rows only (no boundary cases)."""
    e = np.eye(3, dtype=int)
    forward = [_interior_difference(disp, rows, e[k]) for k in range(3)]
    backward = [-_interior_difference(disp, rows, -e[k]) for k in range(3)]
    dets = [_det3(*[(forward, backward)[s][k] for k, s in enumerate(signs)]) for signs in np.ndindex(2, 2, 2)]
    dets.append(_det3(*[_interior_difference(disp, rows, -o) for o in (e[0] + e[1], e[0] + e[2], e[1] + e[2])]))
    dets.append(_det3(*[_interior_difference(disp, rows, o) for o in (e[0] + e[1], e[1] + e[2], e[0] + e[2])]))
    return dets


def ndv_percent(disp: np.ndarray, mask: np.ndarray | None = None, rows_per_chunk: int = 16) -> float:
    """Non-diffeomorphic volume in percent, as the LUMIR 2025 evaluator defines it.

    ``100 * sum_{10 schemes} sum_{mask} max(-J, 0) / 12 / |mask|`` with all maps and the
    mask cropped by one voxel per side (equal to summing :func:`tetrahedral_jacobians` over
    the cropped mask; computed in slabs of ``rows_per_chunk`` rows to bound memory).

    Args:
        disp: ``(3, D0, D1, D2)`` displacement in voxels.
        mask: ``(D0, D1, D2)`` boolean brain mask (the evaluator uses ``fixed > 0``);
            ``None`` means the whole volume.
    Returns:
        NDV in percent (0 for a diffeomorphic field).
    """
    disp = np.asarray(disp, dtype=np.float64)
    crop = (slice(1, -1),) * 3
    m = np.ones(disp.shape[1:], bool)[crop] if mask is None else np.asarray(mask, bool)[crop]
    n = int(m.sum())
    if n == 0:
        return 0.0
    total = 0.0
    for start in range(0, m.shape[0], rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, m.shape[0]))
        slab = m[rows]
        if slab.any():
            total += sum(float(np.maximum(-j, 0.0)[slab].sum()) for j in _interior_jacobians(disp, rows))
    return 100.0 * total / 12.0 / n
