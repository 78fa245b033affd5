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
from caio.io.volumes import moving_voxel_coordinates


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
    world transform) and ``d^-1`` = :func:`caio.spatial.invert_displacement` of ``d`` on the fixed grid
    (sampled with border values beyond it). ``warped(y) = fixed(y + v(y))`` brings the fixed image onto the
    moving grid.

    Returns:
        ``(v, error_mm)``: ``v`` ``[1, 3, M0, M1, M2]`` float32; ``error_mm`` the mean over the fixed grid of
        :func:`caio.spatial.inverse_consistency_error` of ``d`` and ``d^-1`` in mm (0 without ``d``).
    """
    transform = np.eye(4) if transform is None else np.asarray(transform, np.float64)
    to_fixed = np.linalg.inv(np.asarray(fixed_affine, np.float64)) @ np.linalg.inv(transform) @ moving_affine
    base = moving_voxel_coordinates(moving_shape, to_fixed, np.eye(4))  # to_fixed @ y
    identity = spatial.identity_grid(moving_shape, dtype=torch.float64)
    if disp is None:
        return (base - identity).float(), 0.0
    inverse = spatial.invert_displacement(disp.float(), iterations)
    spacing = np.linalg.norm(np.asarray(fixed_affine, np.float64)[:3, :3], axis=0)
    error = float(spatial.inverse_consistency_error(disp.float(), inverse, spacing).mean())
    coords = base + spatial.sample(inverse.double(), base, padding_mode="border")
    return (coords - identity).float(), error
