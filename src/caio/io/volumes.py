"""Volume reading and displacement files.

On disk a displacement is float32 ``(D0, D1, D2, 3)`` (channel-last), voxel units, identity
affine, as the organizers write it; in memory caio uses channel-first ``(3, D0, D1, D2)``
(see :mod:`caio.spatial` for the convention). Every problem with a user's file raises
:class:`caio.errors.CaioInputError` naming the file; outputs are written by :mod:`caio.io.atomic`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import zoom

from caio.errors import CaioInputError
from caio.io.atomic import write_nifti_atomic
from caio.io.dataset import LUMIR_SHAPE
from caio.spatial import grid_scale


def read_volume(path: str | os.PathLike, expected_shape: Sequence[int] | None = LUMIR_SHAPE) -> np.ndarray:
    """Read a 3-D image as float32, checking shape and values.

    The array is used in file order (no reorientation): LUMIR volumes are already on a
    common grid. A volume of another shape is an error, never silently resampled; use
    :func:`caio.io.conform_to_shape` explicitly (``--resample`` on the CLI) to accept it.

    Raises:
        CaioInputError: unreadable file, not 3-D, wrong shape, or non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise CaioInputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for broken files
        raise CaioInputError(f"{path}: cannot read as NIfTI/MGH ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaioInputError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        raise CaioInputError(
            f"{path}: shape {tuple(data.shape)}, expected {tuple(expected_shape)} "
            f"(LUMIR grid; pass --resample to resample it)"
        )
    if not np.isfinite(data).all():
        raise CaioInputError(f"{path}: contains NaN or infinite values")
    return data


def conform_to_shape(volume: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample a volume linearly (or nearest, ``order=0``) onto ``shape`` over the same field of view.

    Corner voxels map to corner voxels (``align_corners`` convention of :mod:`caio.spatial`).
    """
    factors = grid_scale(shape, volume.shape)
    out = zoom(volume, factors, order=order, mode="nearest", grid_mode=False)
    return out[tuple(slice(0, n) for n in shape)].astype(volume.dtype, copy=False)


def write_displacement(path: str | os.PathLike, disp: np.ndarray) -> Path:
    """Write a displacement as the organizers do: float32, ``(D0, D1, D2, 3)``, identity affine.

    Args:
        disp: ``(3, D0, D1, D2)`` channel-first displacement in voxels (caio's in-memory layout).
    Raises:
        ValueError: wrong layout or non-finite values (a bug, not a user error).
    """
    disp = np.asarray(disp)
    if disp.ndim != 4 or disp.shape[0] != 3:
        raise ValueError(f"displacement must be (3, D0, D1, D2), got {disp.shape}")
    if not np.isfinite(disp).all():
        raise ValueError("displacement contains NaN or infinite values; refusing to write it")
    return write_nifti_atomic(path, np.ascontiguousarray(np.moveaxis(disp, 0, -1), dtype=np.float32))


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
    if not path.is_file():
        raise CaioInputError(f"{path}: displacement file not found")
    try:
        data = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float64)
    except Exception as err:
        raise CaioInputError(f"{path}: cannot read as NIfTI ({type(err).__name__}: {err})") from None
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
