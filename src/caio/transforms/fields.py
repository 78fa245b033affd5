"""A world transform and a deformable field as one displacement in voxels of *another* grid, and its inverse.

The full map of ``caio register`` sends a fixed voxel ``x`` to the moving voxel
``phi(x) = inv(A_m) T A_f (x + d(x))``: ``d`` is the deformable field (fixed voxels, on the fixed grid, between
the fixed image and the moving image already resampled through ``T``), ``T`` the 4x4 world transform
(:mod:`caio.transforms.affine`), ``A_f``/``A_m`` the grids' voxel-to-world affines. Written as a displacement,
``u(x) = phi(x) - x`` is in **moving voxels** on the fixed grid: ``warped(x) = moving(x + u(x))`` indexes the
moving image's own array, as the LUMIR evaluator indexes labels (``map_coordinates(labels, identity + u)``).
:mod:`caio.io.fields` records the moving grid in such a file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from caio import spatial
from caio.io.volumes import inside_grid, moving_voxel_coordinates
from caio.kernels.inverse import preimage_points


def moving_voxel_coordinates_through(
    fixed_shape: Sequence[int],
    fixed_affine: np.ndarray,
    moving_affine: np.ndarray,
    transform: np.ndarray | None = None,
    disp: torch.Tensor | None = None,
) -> torch.Tensor:
    """``phi(x) = inv(A_m) T A_f (x + d(x))`` for every fixed voxel ``x``.

    Args:
        transform: 4x4 world transform, fixed world -> moving world (``None``: identity, the headers' alignment).
        disp: ``[1, 3, D0, D1, D2]`` deformable displacement in fixed voxels (``None``: zero).
    Returns:
        ``[1, 3, D0, D1, D2]`` float64 absolute moving voxel coordinates.
    """
    effective = np.asarray(moving_affine, np.float64)
    if transform is not None:
        effective = np.linalg.inv(np.asarray(transform, np.float64)) @ effective  # inv(A') = inv(A_m) T
    return moving_voxel_coordinates(fixed_shape, fixed_affine, effective, disp)


def moving_voxel_displacement(
    fixed_shape: Sequence[int],
    fixed_affine: np.ndarray,
    moving_affine: np.ndarray,
    transform: np.ndarray | None = None,
    disp: torch.Tensor | None = None,
) -> torch.Tensor:
    """``u(x) = phi(x) - x`` (:func:`moving_voxel_coordinates_through`): ``[1, 3, D0, D1, D2]`` float32, moving
    voxels, on the fixed grid; ``warped(x) = moving(x + u(x))`` with ``moving`` on its own grid."""
    coords = moving_voxel_coordinates_through(fixed_shape, fixed_affine, moving_affine, transform, disp)
    return (coords - spatial.identity_grid(fixed_shape, dtype=torch.float64)).float()


def preimage(
    disp: torch.Tensor, targets: torch.Tensor, iterations: int = 30, tolerance: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``z`` with ``z + disp(z) = targets``: where each target came from under ``x -> x + disp(x)``.

    Newton's method on the trilinear interpolant with backtracking (:mod:`caio.kernels.inverse`, on the CPU),
    searched from ``targets - disp(targets)``. Coordinates beyond the volume take the border value of ``disp``.

    Args:
        disp: ``[1, 3, D0, D1, D2]`` displacement in voxels.
        targets: ``[1, 3, T0, T1, T2]`` voxel coordinates on ``disp``'s grid (any spatial size).
        iterations: Newton steps per point at most (a smooth field needs 3-6).
        tolerance: residual ``|z + disp(z) - target|`` (voxels) at which a point stops.
    Returns:
        ``(z, residual)``: ``[1, 3, T0, T1, T2]`` float64 voxel coordinates and ``[1, T0, T1, T2]`` the residual
        length per point (large only where the map folds or the target lies beyond the field's reach).
    """
    if disp.dim() != 5 or disp.shape[:2] != (1, 3) or targets.dim() != 5 or targets.shape[:2] != (1, 3):
        raise ValueError(f"disp and targets must be [1, 3, ...], got {tuple(disp.shape)}, {tuple(targets.shape)}")
    field = np.ascontiguousarray(disp[0].detach().cpu().numpy(), dtype=np.float64)
    points = np.ascontiguousarray(targets[0].detach().cpu().numpy(), dtype=np.float64).reshape(3, -1)
    start = (targets.double() - spatial.sample(disp.double(), targets.double())).cpu().numpy()[0].reshape(3, -1)
    out, residual = np.empty_like(points), np.empty(points.shape[1])
    preimage_points(field, points, np.ascontiguousarray(start), out, residual, int(iterations), float(tolerance))
    shape = tuple(targets.shape[2:])
    z = torch.from_numpy(out.reshape(1, 3, *shape)).to(targets.device)
    return z, torch.from_numpy(residual.reshape(1, *shape)).to(targets.device)


def invert_displacement(disp: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Inverse of the map ``x -> x + disp(x)``: ``v`` with ``x + v(x) + disp(x + v(x)) = x`` at every voxel.

    Each voxel's pre-image is found by :func:`preimage` (Newton's method); where the map folds the pre-image is
    not unique and the one nearest the start is kept. Samples beyond the volume take the border value.

    Args:
        disp: ``[1, 3, D0, D1, D2]`` displacement in voxels.
        iterations: Newton steps per voxel at most.
    Returns:
        ``[1, 3, D0, D1, D2]`` inverse displacement in voxels, on the same grid, in ``disp``'s dtype.
    """
    identity = spatial.identity_grid(disp.shape[2:], disp.device, torch.float64)
    z, _ = preimage(disp, identity, iterations)
    return (z - identity).to(disp.dtype)


def inverse_field(
    fixed_shape: Sequence[int],
    fixed_affine: np.ndarray,
    moving_shape: Sequence[int],
    moving_affine: np.ndarray,
    transform: np.ndarray | None = None,
    disp: torch.Tensor | None = None,
    iterations: int = 30,
) -> tuple[torch.Tensor, float]:
    """The inverse map as a displacement in **fixed voxels** on the **moving** grid, and its error.

    ``phi^-1(y) = A'y + d^-1(A'y)`` with ``A' = inv(A_f) inv(T) A_m`` (moving voxel -> fixed voxel through the
    world transform) and ``d^-1(A'y)`` the pre-image of ``A'y`` under ``x -> x + d(x)``
    (:func:`preimage`, border values beyond the fixed grid). ``warped(y) = fixed(y + v(y))`` brings
    the fixed image onto the moving grid.

    Returns:
        ``(v, error_mm)``: ``v`` ``[1, 3, M0, M1, M2]`` float32; ``error_mm`` the mean round-trip error
        ``|phi^-1(phi(x)) - x|`` (mm) over the fixed voxels that ``phi`` maps inside the moving grid (0 without
        ``d``): trilinear interpolation of ``v`` on the moving grid is all that remains in it.
    """
    transform = np.eye(4) if transform is None else np.asarray(transform, np.float64)
    to_fixed = np.linalg.inv(np.asarray(fixed_affine, np.float64)) @ np.linalg.inv(transform) @ moving_affine
    base = moving_voxel_coordinates(moving_shape, to_fixed, np.eye(4))  # to_fixed @ y
    identity = spatial.identity_grid(moving_shape, dtype=torch.float64)
    if disp is None:
        return (base - identity).float(), 0.0
    # each moving voxel's pre-image under x -> x + d(x), solved where it is needed (not inverted on the fixed grid
    # and resampled: on a coarser moving grid that doubled the interpolation error)
    coords, _ = preimage(disp, base, iterations)
    inverse = (coords - identity).float()
    return inverse, _round_trip_error_mm(
        fixed_shape, fixed_affine, moving_shape, moving_affine, transform, disp, inverse
    )


def _round_trip_error_mm(fixed_shape, fixed_affine, moving_shape, moving_affine, transform, disp, inverse) -> float:
    """Mean ``|phi^-1(phi(x)) - x|`` in mm over the fixed voxels that ``phi`` maps inside the moving grid."""
    phi = moving_voxel_coordinates_through(fixed_shape, fixed_affine, moving_affine, transform, disp)
    inside = inside_grid(phi, moving_shape)[0]
    identity = spatial.identity_grid(fixed_shape, dtype=torch.float64)
    back = phi + spatial.sample(inverse.double(), phi)  # fixed voxels
    spacing = torch.from_numpy(np.linalg.norm(np.asarray(fixed_affine, np.float64)[:3, :3], axis=0))
    error = torch.linalg.vector_norm((back - identity) * spacing.view(1, 3, 1, 1, 1), dim=1)[0]
    return float(error[inside].mean()) if bool(inside.any()) else 0.0
