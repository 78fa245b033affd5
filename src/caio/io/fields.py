"""caio displacement files whose values point into *another* grid (``caio register`` of two grids).

Layout: as every caio displacement (:mod:`caio.io.volumes`), float32 ``(D0, D1, D2, 3)``, channel ``c`` along array
axis ``c``, the header affine that of the grid the field lives on (the fixed image's). What differs is the unit:
``x + u(x)`` are voxel coordinates of a **target grid** (the moving image's), so ``warped(x) = moving(x + u(x))``
indexes the moving image's own array (what the LUMIR evaluator does with ``map_coordinates``).

The file records the target grid twice, so that a reader cannot miss it:

* the header's ``intent_name`` is :data:`INTENT_NAME` (``caio-target-vox``; the intent code stays 0);
* a NIfTI header extension of code 6 (``comment``) holds one JSON object
  ``{"caio_field": 1, "units": "target voxels", "target_shape": [M0, M1, M2], "target_affine": [[4 x 4]]}``
  (the target's voxel-to-world affine, RAS mm, as nibabel gives it).

A file without the intent name is a classic caio field (fixed voxels; the moving image is reached through the
affines, :func:`caio.io.resample_to_grid`). A file with the name but no readable extension is an error.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from caio.errors import CaioInputError
from caio.io.atomic import GZIP_LEVEL, replace_atomically
from caio.io.volumes import load_image, read_displacement

INTENT_NAME = "caio-target-vox"
EXTENSION_CODE = 6  # NIFTI_ECODE_COMMENT
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TargetGrid:
    """The grid a field's values point into: ``shape`` ``(M0, M1, M2)`` and 4x4 ``affine`` (voxel -> RAS mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray


@dataclass(frozen=True)
class FieldFile:
    """A displacement read from disk: ``disp`` ``(3, D0, D1, D2)`` float64 on the grid of ``affine``; ``target``
    is ``None`` for a classic caio field (fixed voxels)."""

    disp: np.ndarray
    affine: np.ndarray
    target: TargetGrid | None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.disp.shape[1:])  # type: ignore[return-value]


def check_output_folder(path: str | os.PathLike) -> Path:
    """``path`` if its folder exists and is writable, else a one-line :class:`CaioInputError`."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise CaioInputError(f"{folder}: output folder {'is not a folder' if folder.exists() else 'does not exist'}")
    if not os.access(folder, os.W_OK):
        raise CaioInputError(f"{folder}: output folder is not writable")
    return path


def save_nifti_atomic(path: str | os.PathLike, img: nib.Nifti1Image) -> Path:
    """Write a prepared NIfTI image (header extensions, intent ...) through a temporary name, then rename."""
    path = check_output_folder(path)
    gzipped = path.name.endswith(".gz")

    def write(tmp: Path) -> None:
        with gzip.open(tmp, "wb", compresslevel=GZIP_LEVEL) if gzipped else open(tmp, "wb") as fh:
            img.to_file_map({"image": nib.FileHolder(fileobj=fh)})

    return replace_atomically(path, write)


def write_target_field(
    path: str | os.PathLike,
    disp: np.ndarray,
    affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    descrip: str | None = None,
) -> Path:
    """Write ``disp`` (``(3, D0, D1, D2)``, voxels of the target grid) with the target grid recorded.

    Raises:
        ValueError: wrong layout or non-finite values (a bug).
        CaioInputError: the file cannot be written.
    """
    disp = np.asarray(disp)
    if disp.ndim != 4 or disp.shape[0] != 3:
        raise ValueError(f"displacement must be (3, D0, D1, D2), got {disp.shape}")
    if not np.isfinite(disp).all():
        raise ValueError("displacement contains NaN or infinite values; refusing to write it")
    img = nib.Nifti1Image(np.moveaxis(disp.astype(np.float32, copy=False), 0, -1), np.asarray(affine, np.float64))
    img.header.set_xyzt_units("mm")
    img.header.set_intent(0, name=INTENT_NAME)
    record = {
        "caio_field": FORMAT_VERSION,
        "units": "target voxels",
        "target_shape": [int(n) for n in target_shape],
        "target_affine": np.asarray(target_affine, np.float64).tolist(),
    }
    img.header.extensions.append(nib.nifti1.Nifti1Extension(EXTENSION_CODE, json.dumps(record).encode()))
    if descrip is not None:
        img.header["descrip"] = descrip.encode("ascii", "replace")[:80]
    return save_nifti_atomic(path, img)


def target_grid_of(img: nib.spatialimages.SpatialImage, path: str | os.PathLike) -> TargetGrid | None:
    """The target grid recorded in a field's header (``None``: a classic field).

    Raises:
        CaioInputError: the intent name says there is one but no extension holds it.
    """
    header = img.header
    try:
        intent_name = header.get_intent()[2]
    except Exception:  # MGH headers and broken intents: no record
        return None
    if intent_name != INTENT_NAME:
        return None
    for extension in getattr(header, "extensions", []):
        if extension.get_code() != EXTENSION_CODE:
            continue
        try:
            record = json.loads(bytes(extension.get_content()).decode("utf-8"))
            if not isinstance(record, dict) or "caio_field" not in record:
                continue
            shape = tuple(int(n) for n in record["target_shape"])
            affine = np.asarray(record["target_affine"], np.float64)
        except (ValueError, KeyError, TypeError):
            continue
        if len(shape) == 3 and affine.shape == (4, 4) and np.isfinite(affine).all():
            return TargetGrid(shape, affine)  # type: ignore[arg-type]
    raise CaioInputError(f"{path}: intent '{INTENT_NAME}' but no readable target-grid record in the header extensions")


def read_field(path: str | os.PathLike) -> FieldFile:
    """Read any caio displacement file (classic or with a target grid).

    Raises:
        CaioInputError: see :func:`caio.io.read_displacement` and :func:`target_grid_of`.
    """
    disp = read_displacement(path)
    img = load_image(path, "displacement")
    return FieldFile(disp, np.asarray(img.affine, np.float64), target_grid_of(img, path))
