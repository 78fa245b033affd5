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
from caio.io.header import ImageHeader, describe, one_line, quiet_nibabel, read_data
from caio.io.memory import memory_limit, read_bytes
from caio.spatial import grid_scale

log = logging.getLogger(__name__)

MAX_ABS_INTENSITY = 1e6
"""Largest accepted ``|intensity|``: LUMIR images are in [0, 255], raw MRI/CT stay far below;
larger values (e.g. 1e30) overflow the squared terms of the similarity in float32."""

GZIP_MAGIC = b"\x1f\x8b"


def _open(path: Path) -> nib.spatialimages.SpatialImage:
    """``nib.load`` (header only), its failures turned into one line naming ``path``."""
    quiet_nibabel()
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises many types for broken files
        with open(path, "rb") as fh:
            head = fh.read(2)
        if path.name.endswith((".gz", ".mgz")) and head != GZIP_MAGIC:
            raise CaioInputError(
                f"{path}: not gzip-compressed although the name says so (not a NIfTI/MGH file?)"
            ) from None
        if "w2 should be positive" in str(err):
            problem = "invalid qform: quaternion with b^2 + c^2 + d^2 > 1 (not a rotation)"
            raise CaioInputError(f"{path}: {problem}") from None
        raise CaioInputError(f"{path}: cannot read as NIfTI/MGH ({one_line(err)})") from None


def inspect_image(path: str | os.PathLike, what: str = "image", *, use_affine: bool = True) -> ImageHeader:
    """Open an image file and check its header (:func:`caio.io.header.describe`); no voxel data are read.

    Args:
        use_affine: the caller needs the affine (``register``, ``warp``): an unusable one is an error.
            ``False`` (array-index work: ``predict``, ``evaluate``, ``qc``): it is ignored, and
            :attr:`ImageHeader.geometry_problem` says what (the readers log it once the data are read).
    Raises:
        CaioInputError: see :func:`caio.io.dataset.check_input_file`, :func:`load_image` and
            :func:`caio.io.header.describe`; a geometry problem when ``use_affine``.
    """
    path = check_input_file(path, what)
    header = describe(_open(path), path)
    if header.geometry_problem and use_affine:
        raise CaioInputError(f"{path}: {header.geometry_problem} (fix the header's sform/qform)")
    return header


def _warn_if_affine_ignored(header: ImageHeader) -> None:
    """After a successful read only: a refused file gets one line, its error."""
    if header.geometry_problem:
        log.warning("%s: %s; affine ignored (array indices are used)", header.path, header.geometry_problem)


def load_image(path: str | os.PathLike, what: str = "image") -> nib.spatialimages.SpatialImage:
    """Open a NIfTI (``.nii``, ``.nii.gz``) or MGH (``.mgz``) file for a command that uses its affine;
    its header only (checked by :func:`inspect_image`), the data stay on disk.

    Raises:
        CaioInputError: the file is unusable (:func:`caio.io.dataset.check_input_file`), is not an
            image nibabel can read (garbage bytes, a ``.gz`` name on uncompressed data ...), or its
            header is (:func:`caio.io.header.describe`, including a singular or non-finite affine).
    """
    return inspect_image(path, what).image


def volume_shape(header: ImageHeader) -> tuple[int, int, int]:
    """The 3-D shape of an image header: trailing axes of size 1 beyond the third dropped.

    Raises:
        CaioInputError: a 2-D image (or a size-1 axis among the first three), a 4-D/5-D image.
    """
    shape = header.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3 or min(shape) < 2:
        kind = "a 2-D image" if len(shape) < 3 or min(shape) < 2 else f"a {len(shape)}-D image"
        raise CaioInputError(f"{header.path}: {kind} of shape {shape}, expected one 3-D volume")
    return shape  # type: ignore[return-value]


def read_image(
    header: ImageHeader, keep_dtype: bool = False, max_memory: int | None = None, what: str = "reading it"
) -> np.ndarray:
    """The checked voxel array of a checked header: 3-D, finite, ``|value| <= MAX_ABS_INTENSITY``.

    Args:
        keep_dtype: keep the stored integer/float type (float32 when the file is scaled).
        max_memory: bytes allowed for the read (``None``: the memory available now).
    Returns:
        ``(D0, D1, D2)`` float32 (or the stored type), in file order.
    Raises:
        CaioInputError: see :func:`volume_shape`, :func:`caio.io.header.read_data`; more memory than allowed.
    """
    shape = volume_shape(header)
    out_dtype = None if keep_dtype else np.float32
    itemsize = 4 if out_dtype is not None or header.scaled else header.dtype.itemsize
    need = read_bytes(shape, itemsize)
    memory_limit(max_memory).check(need, header.path, f"{what} ({'x'.join(map(str, shape))} voxels)")
    data = read_data(header, out_dtype, max_abs=MAX_ABS_INTENSITY)
    return data.reshape(shape, order="A")


def image_data(img: nib.spatialimages.SpatialImage, path: str | os.PathLike, keep_dtype: bool = False) -> np.ndarray:
    """The voxel array of ``img``, checked: numeric, 3-D, finite, ``|value| <= MAX_ABS_INTENSITY``.

    The header is checked first (:func:`caio.io.header.describe`), the read must fit in the memory
    available, and the data are streamed (:func:`caio.io.header.read_data`). Integer and float64 data
    are converted to float32 (``keep_dtype=False``); scaled data (``scl_slope``/``scl_inter``) are
    checked after scaling, as the engine sees them; trailing axes of size 1 are dropped.

    Returns:
        ``(D0, D1, D2)`` float32 (or the file's dtype with ``keep_dtype``), in file order.
    Raises:
        CaioInputError: truncated/corrupt/over-long data, a 2-D or 4-D/5-D image, a non-numeric dtype,
            NaN/Inf, values beyond :data:`MAX_ABS_INTENSITY`, more memory than available.
    """
    return read_image(describe(img, path), keep_dtype)


def read_volume(
    path: str | os.PathLike, expected_shape: Sequence[int] | None = LUMIR_SHAPE, max_memory: int | None = None
) -> np.ndarray:
    """Read a 3-D image as float32, checking the file, its header, its shape and its values.

    The array is used in file order (no reorientation): LUMIR volumes are already on a
    common grid, and the evaluator works in array-index space (an unusable affine is ignored,
    with a warning). A volume of another shape is an error, found in the header before any
    data are read, never silently resampled; use :func:`caio.io.conform_to_shape` explicitly
    (``--resample`` on the CLI) or :func:`resample_to_grid` (``caio register``) to accept it.

    Raises:
        CaioInputError: see :func:`inspect_image` and :func:`read_image`; a wrong shape.
    """
    header = inspect_image(path, use_affine=False)
    check_shape(header, expected_shape)
    data = read_image(header, max_memory=max_memory)
    _warn_if_affine_ignored(header)
    return data


def check_shape(header: ImageHeader, expected_shape: Sequence[int] | None) -> tuple[int, int, int]:
    """The header's 3-D shape (:func:`volume_shape`), which must be ``expected_shape`` when given.

    Raises:
        CaioInputError: not one 3-D volume, or another shape.
    """
    shape = volume_shape(header)
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise CaioInputError(
            f"{header.path}: shape {tuple(shape)}, expected {tuple(expected_shape)} "
            f"(LUMIR grid; pass --resample to resample it)"
        )
    return shape


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


def field_of_view(
    moving_shape: Sequence[int], moving_affine: np.ndarray, fixed_shape: Sequence[int], fixed_affine: np.ndarray
) -> np.ndarray:
    """The fixed voxels that see the moving image: ``(D0, D1, D2)`` bool, true where the point ``x`` maps inside
    the moving grid (every moving-voxel coordinate in ``[0, M_c - 1]``, :func:`moving_voxel_coordinates`), so that
    :func:`resample_to_grid` interpolates there between moving voxels only, never the zeros it pads with."""
    coords = moving_voxel_coordinates(fixed_shape, fixed_affine, moving_affine)
    return inside_grid(coords, moving_shape, tolerance=1e-6)[0].numpy()


def inside_grid(coords: torch.Tensor, shape: Sequence[int], tolerance: float = 0.0) -> torch.Tensor:
    """``[B, D0, D1, D2]`` bool: the points of ``coords`` (``[B, 3, D0, D1, D2]`` voxel coordinates of a grid of
    ``shape``) with every coordinate in ``[-tolerance, shape_c - 1 + tolerance]``."""
    inside = torch.ones((coords.shape[0], *coords.shape[2:]), dtype=torch.bool, device=coords.device)
    for axis, size in enumerate(shape[:3]):
        inside &= (coords[:, axis] >= -tolerance) & (coords[:, axis] <= size - 1 + tolerance)
    return inside


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


def read_displacement(
    path: str | os.PathLike, expected_shape: Sequence[int] | None = None, max_memory: int | None = None
) -> np.ndarray:
    """Read a displacement file the way the evaluator does (array indices, affine ignored); channel-first float64.

    The file may be channel-last ``(D0, D1, D2, 3)`` or channel-first ``(3, D0, D1, D2)``
    (recognised, as by the evaluator, by a first dimension of 3). Its header is checked and the
    shape compared before any data are read.

    Args:
        expected_shape: spatial shape the field must have (``None``: any).
        max_memory: bytes allowed for the read (``None``: the memory available now).
    Returns:
        ``(3, D0, D1, D2)`` float64.
    Raises:
        CaioInputError: missing/unreadable file, wrong shape, non-finite values, more memory than allowed.
    """
    path = Path(path)
    header = inspect_image(path, "displacement", use_affine=False)
    shape = header.shape
    channel_first = len(shape) == 4 and shape[0] == 3
    if not (channel_first or (len(shape) == 4 and shape[-1] == 3)):
        raise CaioInputError(f"{path}: displacement must be (D0, D1, D2, 3) or (3, D0, D1, D2), got {shape}")
    grid = shape[1:] if channel_first else shape[:3]
    if expected_shape is not None and tuple(grid) != tuple(expected_shape):
        raise CaioInputError(f"{path}: displacement grid {tuple(grid)}, expected {tuple(expected_shape)}")
    memory_limit(max_memory).check(read_bytes(shape, 8), path, "reading the displacement")
    data = read_data(header, np.float64)
    _warn_if_affine_ignored(header)
    return data if channel_first else np.moveaxis(data, -1, 0)


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
