"""Volume reading and displacement files.

On disk a displacement is float32 ``(D0, D1, D2, 3)`` (channel-last), voxel units, identity
affine, as the organizers write it; in memory caio uses channel-first ``(3, D0, D1, D2)``
(see :mod:`caio.spatial` for the convention). Every problem with a user's file raises
:class:`caio.errors.CaioInputError` naming the file; outputs are written by :mod:`caio.io.atomic`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from caio import spatial
from caio.errors import CaioInputError
from caio.io.atomic import write_nifti_atomic
from caio.io.dataset import LUMIR_SHAPE, check_input_file
from caio.spatial import grid_scale

log = logging.getLogger(__name__)

MAX_ABS_INTENSITY = 1e6
"""Largest accepted ``|intensity|``: LUMIR images are in [0, 255], raw MRI/CT stay far below;
larger values (e.g. 1e30) overflow the squared terms of the similarity in float32."""

GZIP_MAGIC = b"\x1f\x8b"


def load_image(path: str | os.PathLike, what: str = "image") -> nib.spatialimages.SpatialImage:
    """Open a NIfTI (``.nii``, ``.nii.gz``) or MGH (``.mgz``) file; its header only, data stay on disk.

    Raises:
        CaioInputError: the file is unusable (:func:`caio.io.dataset.check_input_file`) or is not
            an image nibabel can read (garbage bytes, a ``.gz`` name on uncompressed data ...).
    """
    path = check_input_file(path, what)
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises many types for broken files
        with open(path, "rb") as fh:
            head = fh.read(2)
        if path.name.endswith((".gz", ".mgz")) and head != GZIP_MAGIC:
            raise CaioInputError(
                f"{path}: not gzip-compressed although the name says so (not a NIfTI/MGH file?)"
            ) from None
        raise CaioInputError(f"{path}: cannot read as NIfTI/MGH ({_one_line(err)})") from None


def image_data(img: nib.spatialimages.SpatialImage, path: str | os.PathLike, keep_dtype: bool = False) -> np.ndarray:
    """The voxel array of ``img``, checked: numeric, 3-D, finite, ``|value| <= MAX_ABS_INTENSITY``.

    Integer and float64 data are accepted and converted to float32 (``keep_dtype=False``);
    trailing axes of size 1 (a 4-D image with one channel) are dropped.

    Returns:
        ``(D0, D1, D2)`` float32 (or the file's dtype with ``keep_dtype``), in file order.
    Raises:
        CaioInputError: truncated/corrupt data, a 2-D or 4-D/5-D image, a non-numeric dtype,
            NaN/Inf, or values beyond :data:`MAX_ABS_INTENSITY`.
    """
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise CaioInputError(f"{path}: truncated or corrupt image data ({_one_line(err)})") from None
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise CaioInputError(f"{path}: data type {data.dtype} is not supported (expected integers or floats)")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        kind = "a 2-D image" if data.ndim < 3 or min(data.shape) < 2 else f"a {data.ndim}-D image"
        raise CaioInputError(f"{path}: {kind} of shape {data.shape}, expected one 3-D volume")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise CaioInputError(f"{path}: contains NaN or infinite values")
    peak = float(np.abs(data).max(initial=0).astype(np.float64))
    if peak > MAX_ABS_INTENSITY:
        raise CaioInputError(
            f"{path}: intensity {peak:.3g} beyond {MAX_ABS_INTENSITY:.0e} (rescale the image, e.g. to [0, 255])"
        )
    return data if keep_dtype else np.asarray(data, dtype=np.float32)


def read_volume(path: str | os.PathLike, expected_shape: Sequence[int] | None = LUMIR_SHAPE) -> np.ndarray:
    """Read a 3-D image as float32, checking the file, its shape and its values.

    The array is used in file order (no reorientation): LUMIR volumes are already on a
    common grid, and the evaluator works in array-index space. A volume of another shape is
    an error, never silently resampled; use :func:`caio.io.conform_to_shape` explicitly
    (``--resample`` on the CLI) or :func:`resample_to_grid` (``caio register``) to accept it.

    Raises:
        CaioInputError: see :func:`load_image` and :func:`image_data`; a wrong shape.
    """
    data = image_data(load_image(path), path)
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        raise CaioInputError(
            f"{path}: shape {tuple(data.shape)}, expected {tuple(expected_shape)} "
            f"(LUMIR grid; pass --resample to resample it)"
        )
    return data


def same_grid(shape_a: Sequence[int], affine_a: np.ndarray, shape_b: Sequence[int], affine_b: np.ndarray) -> bool:
    """Whether two images share a voxel grid: same shape and affines equal to 1e-4 mm."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=1e-4)


def moving_voxel_coordinates(
    fixed_shape: Sequence[int], fixed_affine: np.ndarray, moving_affine: np.ndarray, disp: torch.Tensor | None = None
) -> torch.Tensor:
    """Voxel coordinates in the moving image of every fixed voxel ``x`` (after ``x + disp(x)``).

    The voxel-to-voxel map is ``inv(moving_affine) @ fixed_affine`` (both NIfTI voxel-to-world
    affines), so any orientation, voxel size or field of view is handled.

    Args:
        disp: ``[1, 3, D0, D1, D2]`` displacement in fixed voxels (``None``: zero).
    Returns:
        ``[1, 3, D0, D1, D2]`` float64 absolute moving-voxel coordinates (:func:`caio.spatial.sample`'s ``grid``).
    """
    grid = spatial.identity_grid(fixed_shape, dtype=torch.float64)
    if disp is not None:
        grid = grid + disp.to(torch.float64)
    vox = np.linalg.inv(np.asarray(moving_affine, np.float64)) @ np.asarray(fixed_affine, np.float64)
    if np.allclose(vox, np.eye(4), atol=1e-6):
        return grid
    rotation, shift = torch.from_numpy(vox[:3, :3]), torch.from_numpy(vox[:3, 3])
    return torch.einsum("ij,bjxyz->bixyz", rotation, grid) + shift.view(1, 3, 1, 1, 1)


def resample_to_grid(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed_shape: Sequence[int],
    fixed_affine: np.ndarray,
    disp: torch.Tensor | None = None,
    nearest: bool = False,
) -> np.ndarray:
    """Sample ``moving`` on the fixed voxel grid in world coordinates, optionally through ``disp``.

    ``out(x) = moving(V (x + disp(x)))`` with ``V = inv(moving_affine) @ fixed_affine``: one
    interpolation, however different the grids are. Outside the moving field of view the value is 0.

    Args:
        moving: ``(M0, M1, M2)`` image or label map.
        disp: ``[1, 3, D0, D1, D2]`` displacement in fixed voxels (``None``: plain resampling).
        nearest: nearest neighbour exactly as the evaluator warps labels; keeps ``moving``'s dtype.
    Returns:
        ``(D0, D1, D2)``: float32 (trilinear) or ``moving.dtype`` (nearest).
    """
    coords = moving_voxel_coordinates(fixed_shape, fixed_affine, moving_affine, disp)
    if nearest:
        offset = coords[0] - spatial.identity_grid(fixed_shape, dtype=torch.float64)[0]
        return spatial.warp_labels_nearest(np.asarray(moving), offset.numpy())
    image = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None, None]
    return spatial.sample(image, coords.float(), padding_mode="zeros")[0, 0].numpy()


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def conform_to_shape(volume: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample a volume linearly (or nearest, ``order=0``) onto ``shape`` over the same field of view.

    Corner voxels map to corner voxels (``align_corners`` convention of :mod:`caio.spatial`).
    """
    from scipy.ndimage import zoom  # here: importing scipy.ndimage adds 0.15 s to every predict.py start

    factors = grid_scale(shape, volume.shape)
    out = zoom(volume, factors, order=order, mode="nearest", grid_mode=False)
    return out[tuple(slice(0, n) for n in shape)].astype(volume.dtype, copy=False)


def write_displacement(
    path: str | os.PathLike, disp: np.ndarray, affine: np.ndarray | None = None, *, descrip: str | None = None
) -> Path:
    """Write a displacement as the organizers do: float32, ``(D0, D1, D2, 3)``, identity affine, atomically.

    Args:
        disp: ``(3, D0, D1, D2)`` channel-first displacement in voxels (caio's in-memory layout).
        affine: header affine (``None``: identity, the LUMIR convention; ``caio register``
            passes the fixed image's, so viewers overlay the field on the fixed image).
        descrip: text for the header's ``descrip`` field (``predict.py`` writes each pair's status there).
    Raises:
        ValueError: wrong layout or non-finite values (a bug, not a user error).
        CaioInputError: the file cannot be written (the temporary file is removed).
    """
    disp = np.asarray(disp)
    if disp.ndim != 4 or disp.shape[0] != 3:
        raise ValueError(f"displacement must be (3, D0, D1, D2), got {disp.shape}")
    if not np.isfinite(disp).all():
        raise ValueError("displacement contains NaN or infinite values; refusing to write it")
    channel_last = np.moveaxis(np.asarray(disp, np.float32), 0, -1)  # a view: nibabel writes it slab by slab
    return write_nifti_atomic(path, channel_last, affine, descrip=descrip)


def read_displacement(path: str | os.PathLike, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a displacement file the way the evaluator does; return channel-first float64.

    The file may be channel-last ``(D0, D1, D2, 3)`` or channel-first ``(3, D0, D1, D2)``
    (recognised, as by the evaluator, by a first dimension of 3).

    Args:
        expected_shape: spatial shape the field must have (``None``: any).
    Returns:
        ``(3, D0, D1, D2)`` float64.
    Raises:
        CaioInputError: missing/unreadable file, wrong shape, or non-finite values.
    """
    path = Path(path)
    img = load_image(path, "displacement")
    try:
        data = np.asarray(img.get_fdata(), dtype=np.float64)
    except Exception as err:
        raise CaioInputError(f"{path}: truncated or corrupt displacement data ({_one_line(err)})") from None
    if data.ndim == 4 and data.shape[0] == 3:
        data = np.moveaxis(data, 0, -1)
    if data.ndim != 4 or data.shape[-1] != 3:
        raise CaioInputError(f"{path}: displacement must be (D0, D1, D2, 3) or (3, D0, D1, D2), got {data.shape}")
    if expected_shape is not None and tuple(data.shape[:3]) != tuple(expected_shape):
        raise CaioInputError(f"{path}: displacement grid {data.shape[:3]}, expected {tuple(expected_shape)}")
    if not np.isfinite(data).all():
        raise CaioInputError(f"{path}: displacement contains NaN or infinite values")
    return np.moveaxis(data, -1, 0)


def validate_displacement_file(path: str | os.PathLike, shape: Sequence[int] = LUMIR_SHAPE) -> str | None:
    """Return ``None`` if ``path`` is a valid output for a grid of ``shape``, else the reason."""
    path = Path(path)
    try:
        img = nib.load(str(path))
        if img.get_data_dtype() != np.float32:
            return f"{path}: dtype {img.get_data_dtype()}, expected float32"
        read_displacement(path, expected_shape=shape)
    except CaioInputError as err:
        return str(err)
    except Exception as err:
        return f"{path}: {type(err).__name__}: {err}"
    return None
