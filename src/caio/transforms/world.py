"""Voxel grids in millimetres: pyramid levels, world points, centres of mass and principal axes.

A grid is a shape ``(D0, D1, D2)`` and a 4x4 voxel-to-world affine (NIfTI, RAS mm). A coarser level over the same
field of view keeps the corner voxels (``align_corners``, :func:`caio.spatial.scaled_shape`), so its affine is the
original one times ``diag(s0, s1, s2, 1)`` with ``s_k = (n_old - 1) / (n_new - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from caio import spatial
from caio.kernels.filters import filter_each_axis


@dataclass(frozen=True)
class Grid:
    """An image on its voxel grid: ``image`` ``[1, C, D0, D1, D2]``, ``affine`` 4x4 voxel -> world (mm)."""

    image: torch.Tensor
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.image.shape[2:])  # type: ignore[return-value]


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (norms of the affine's columns)."""
    return np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)


def level_shape(shape: Sequence[int], affine: np.ndarray, spacing_mm: float, minimum: int = 8) -> tuple[int, ...]:
    """Shape of the grid over the same field of view with voxels of about ``spacing_mm`` (never finer than
    the original, at least ``minimum`` voxels per axis unless the original has fewer)."""
    sizes = voxel_sizes(affine)
    out = []
    for n, size in zip(shape, sizes):
        factor = max(1.0, spacing_mm / size)
        out.append(min(n, max(minimum, int(round((n - 1) / factor)) + 1)))
    return tuple(out)


def level_affine(affine: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """Voxel-to-world affine of ``new_shape`` over the field of view of ``old_shape`` (corners kept)."""
    scale = spatial.grid_scale(old_shape, new_shape)  # new voxel -> old voxel
    return np.asarray(affine, np.float64) @ np.diag([*scale, 1.0])


def downsample(grid: Grid, spacing_mm: float, minimum: int = 8) -> Grid:
    """``grid`` resampled (anti-aliased) to voxels of about ``spacing_mm``: :func:`caio.spatial.resize_image`,
    with its Gaussian run by the Numba axis filters on a CPU (1.8 s of PyTorch ``conv3d`` for the 1.6 mm moving
    image of a 2 mm pair, a third of the affine stage there)."""
    shape = level_shape(grid.shape, grid.affine, spacing_mm, minimum)
    return Grid(antialiased_resize(grid.image, shape), level_affine(grid.affine, grid.shape, shape))


def antialiased_resize(image: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """:func:`caio.spatial.resize_image` of ``[1, C, ...]`` (the same Gaussians: ``sigma = 0.5 * factor`` voxels
    along each shrinking axis, replicate padding, then trilinear resampling)."""
    if image.device.type != "cpu" or image.dtype != torch.float32 or image.shape[0] != 1:
        return spatial.resize_image(image, shape)
    sigmas = spatial.antialias_sigmas(tuple(image.shape[2:]), shape)
    kernels = tuple(spatial.gaussian_kernel1d(sigma).numpy() if sigma > 0 else None for sigma in sigmas)
    blurred = torch.from_numpy(filter_each_axis(image[0].numpy(), kernels, replicate=True))[None]
    return spatial.resize_image(blurred, shape, antialias=False)


def along_axes_of(grid: Grid, weight: torch.Tensor, reference_affine: np.ndarray) -> tuple[Grid, torch.Tensor]:
    """``grid`` (and its ``weight``) resampled onto a grid with the axes and voxel size of ``reference_affine``
    that covers ``grid``'s field of view: descriptors tied to array axes (MIND-SSC) then mean the same
    directions in both images, whatever the orientations stored in the headers."""
    reference_affine = np.asarray(reference_affine, np.float64)
    corners = grid_corners(grid.shape, grid.affine)
    index = apply_matrix(np.linalg.inv(reference_affine), corners)
    low, high = np.floor(index.min(axis=0)), np.ceil(index.max(axis=0))
    shape = tuple(int(n) for n in (high - low + 1))
    affine = reference_affine.copy()
    affine[:3, 3] = reference_affine[:3, :3] @ low + reference_affine[:3, 3]
    voxel = np.linalg.inv(grid.affine) @ affine
    coords = torch.einsum(
        "ij,bjxyz->bixyz", torch.from_numpy(voxel[:3, :3]).float(), spatial.identity_grid(shape)
    ) + torch.from_numpy(voxel[:3, 3]).float().view(1, 3, 1, 1, 1)
    image = spatial.sample(grid.image, coords, padding_mode="zeros")
    return Grid(image, affine), spatial.sample(weight, coords, padding_mode="zeros")


def crop_to_content(grid: Grid, weight: torch.Tensor, margin: int) -> tuple[Grid, torch.Tensor]:
    """``grid`` and ``weight`` cut to the bounding box of the voxels where both are non-zero, plus ``margin``
    voxels (the affine follows): the empty background of a skull-stripped image costs no similarity work."""
    content = (grid.image[0].abs().sum(dim=0) > 0) & (weight[0, 0] > 0)
    if not bool(content.any()):
        return grid, weight
    index = torch.nonzero(content)
    low = (index.min(dim=0).values - margin).clamp_min(0).tolist()
    high = [min(int(h) + margin + 1, n) for h, n in zip(index.max(dim=0).values, grid.shape)]
    box = (..., *(slice(lo, hi) for lo, hi in zip(low, high)))
    affine = np.asarray(grid.affine, np.float64).copy()
    affine[:3, 3] = affine[:3, :3] @ np.asarray(low, np.float64) + affine[:3, 3]
    return Grid(grid.image[box].contiguous(), affine), weight[box].contiguous()


@dataclass(frozen=True)
class Moments:
    """Intensity moments of an image in world coordinates: ``total`` weight, ``centre`` ``(3,)`` mm,
    ``covariance`` ``(3, 3)`` mm^2 (of the world coordinates, weighted by the clipped intensity)."""

    total: float
    centre: np.ndarray
    covariance: np.ndarray


def intensity_moments(image: np.ndarray, affine: np.ndarray) -> Moments:
    """:class:`Moments` of ``image`` (negative values count as 0; an empty image gives the grid's centre and its
    uniform covariance). Computed from the image's 1-D and 2-D marginal sums, exactly, without a coordinate per
    voxel (those arrays took 0.5-1 s of an affine registration at 1 mm)."""
    weight = np.clip(np.asarray(image, np.float64), 0, None)
    if weight.sum() <= 0:
        weight = np.ones(weight.shape)
    total = float(weight.sum())
    index = [np.arange(n, dtype=np.float64) for n in weight.shape]
    axes = range(3)
    marginal = [weight.sum(axis=tuple(b for b in axes if b != a)) for a in axes]
    mean = np.array([marginal[a] @ index[a] / total for a in axes])
    second = np.empty((3, 3))
    for a in axes:
        second[a, a] = marginal[a] @ index[a] ** 2 / total
        for b in range(a + 1, 3):
            plane = weight.sum(axis=3 - a - b)  # the (a, b) marginal
            second[a, b] = second[b, a] = index[a] @ plane @ index[b] / total
    linear, offset = np.asarray(affine, np.float64)[:3, :3], np.asarray(affine, np.float64)[:3, 3]
    covariance = linear @ (second - np.outer(mean, mean)) @ linear.T
    return Moments(total, linear @ mean + offset, covariance)


def centre_of_mass(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre (mm) of a non-negative image (negative values count as 0); the grid's
    centre when the image is empty."""
    return intensity_moments(image, affine).centre


def principal_axes(moments: Moments) -> np.ndarray:
    """``3x3`` matrix whose columns are the eigenvectors of ``moments.covariance`` (the intensity-weighted
    covariance of the world coordinates, :func:`intensity_moments`), largest eigenvalue first; a right-handed
    basis."""
    _, vectors = np.linalg.eigh(moments.covariance)
    vectors = vectors[:, ::-1]
    if np.linalg.det(vectors) < 0:
        vectors[:, 2] *= -1
    return vectors


def axis_sign_flips() -> list[np.ndarray]:
    """The four proper sign changes of a basis (eigenvector signs are arbitrary)."""
    return [np.diag(s) for s in ([1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1])]


def grid_corners(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """``(8, 3)`` world coordinates (mm) of the corner voxels of a grid."""
    index = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    affine = np.asarray(affine, np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N, 3)`` points through a 4x4 matrix."""
    matrix = np.asarray(matrix, np.float64)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def corner_error_mm(estimate: np.ndarray, truth: np.ndarray, shape: Sequence[int], affine: np.ndarray) -> float:
    """Mean distance (mm) between where two world transforms send the 8 corners of a grid (``shape``, ``affine``)."""
    corners = grid_corners(shape, affine)
    return float(np.linalg.norm(apply_matrix(estimate, corners) - apply_matrix(truth, corners), axis=1).mean())
