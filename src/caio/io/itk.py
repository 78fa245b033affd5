"""ITK transform files, as ``antsRegistration`` writes and ``antsApplyTransforms``, ITK and 3D Slicer read them.

ITK works in **LPS** physical coordinates (mm), NIfTI/nibabel in RAS: ``p_lps = diag(-1, -1, 1) p_ras``. An ITK
transform maps a point of the **fixed** (output, reference) space to the **moving** space it samples, the same
direction as caio's world transform (:mod:`caio.transforms`), so no inversion is involved, only the LPS change.

* **Affine** (:func:`write_itk_affine`, :func:`read_itk_affine`): ``AffineTransform_double_3_3``, 12 parameters
  (the 3x3 matrix ``A`` row by row, then the translation ``t``) and 3 fixed parameters (the centre ``c``):
  ``y = A (x - c) + c + t``. ``.mat``: MATLAB v4 file (``scipy.io.savemat(format="4")``) with the keys
  ``AffineTransform_double_3_3`` (12 x 1) and ``fixed`` (3 x 1), as ``antsRegistration`` writes
  ``*GenericAffine.mat``; ``.txt``: ``#Insight Transform File V1.0`` text. caio writes the fixed grid's centre as
  ``c``; readers accept any centre, ``float`` or ``double`` and ``MatrixOffsetTransformBase``.
* **Displacement field** (:func:`write_itk_displacement`, :func:`read_itk_displacement`): a NIfTI vector image on
  the fixed image's grid (its affine), shape ``(X, Y, Z, 1, 3)``, intent ``NIFTI_INTENT_VECTOR`` (1007), float32,
  each vector the displacement **in mm along LPS axes** (ITK stores vector components in its physical space, not
  in the NIfTI's RAS): ``T(p) = p + D(p)``.

Applying both: a fixed point ``p`` goes through the field first, then through the affine: ``moving point =
A(p + D(p))``. That is ``antsApplyTransforms -r fixed -t warp.nii.gz -t affine.mat`` (the order
``antsRegistration`` prints), and ``sitk.CompositeTransform([affine, field])`` in SimpleITK (whose composite
applies its last transform to a point first).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from caio.errors import CaioInputError
from caio.io.atomic import replace_atomically, write_text_atomic
from caio.io.fields import check_output_folder, save_nifti_atomic
from caio.io.volumes import load_image

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Change of world coordinates between RAS (NIfTI) and LPS (ITK); it is its own inverse."""
AFFINE_TYPE = "AffineTransform_double_3_3"
READABLE_TYPES = re.compile(r"^(AffineTransform|MatrixOffsetTransformBase)_(double|float)_3_3$")
VECTOR_INTENTS = ("vector", "displacement vector")


def to_lps(transform_ras: np.ndarray) -> np.ndarray:
    """A 4x4 world transform in RAS coordinates expressed in LPS (or back: the change is an involution)."""
    return RAS_TO_LPS @ np.asarray(transform_ras, np.float64) @ RAS_TO_LPS


def grid_centre(shape, affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) position of a grid's centre ``(n - 1) / 2``."""
    centre = np.array([(n - 1) / 2.0 for n in shape] + [1.0])
    return (np.asarray(affine, np.float64) @ centre)[:3]


def itk_affine_parameters(transform_ras: np.ndarray, centre_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(parameters (12,), fixed parameters (3,))`` of ``AffineTransform_double_3_3`` for a RAS world transform,
    with its centre at ``centre_ras``."""
    lps = to_lps(transform_ras)
    centre = (RAS_TO_LPS[:3, :3] @ np.asarray(centre_ras, np.float64)).astype(np.float64)
    matrix, offset = lps[:3, :3], lps[:3, 3]
    translation = matrix @ centre + offset - centre  # y = A (x - c) + c + t  =>  t = A c + o - c
    return np.concatenate([matrix.reshape(-1), translation]), centre


def transform_from_itk_parameters(parameters: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """The 4x4 RAS world transform of ITK affine ``parameters`` (12) and centre ``fixed`` (3)."""
    matrix, translation = parameters[:9].reshape(3, 3), parameters[9:12]
    centre = np.asarray(fixed, np.float64).reshape(3)
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + centre - matrix @ centre
    return to_lps(lps)


def write_itk_affine(path: str | os.PathLike, transform_ras: np.ndarray, centre_ras: np.ndarray) -> Path:
    """Write a world transform (fixed RAS -> moving RAS) as an ITK affine: ``.mat`` (MATLAB v4) or ``.txt``.

    Raises:
        CaioInputError: another suffix, or the file cannot be written.
    """
    path = Path(path)
    parameters, fixed = itk_affine_parameters(transform_ras, centre_ras)
    if path.suffix == ".txt":
        text = (
            "#Insight Transform File V1.0\n#Transform 0\n"
            f"Transform: {AFFINE_TYPE}\n"
            f"Parameters: {' '.join(repr(float(v)) for v in parameters)}\n"
            f"FixedParameters: {' '.join(repr(float(v)) for v in fixed)}\n"
        )
        check_output_folder(path)
        return write_text_atomic(path, text)
    if path.suffix != ".mat":
        raise CaioInputError(f"{path}: an ITK affine file name must end in .mat or .txt")
    from scipy.io import savemat

    payload = {AFFINE_TYPE: parameters.reshape(12, 1), "fixed": fixed.reshape(3, 1)}

    def write(tmp: Path) -> None:
        buffer = io.BytesIO()
        savemat(buffer, payload, format="4")
        tmp.write_bytes(buffer.getvalue())

    return replace_atomically(check_output_folder(path), write)


def read_itk_affine(path: str | os.PathLike) -> np.ndarray:
    """Read an ITK affine (``.mat`` or ``.txt``) as a 4x4 RAS world transform (fixed -> moving).

    Raises:
        CaioInputError: missing file, not an ITK transform file, or not one affine transform.
    """
    path = Path(path)
    if not path.is_file():
        raise CaioInputError(f"{path}: ITK transform file not found")
    if path.suffix == ".txt" or path.suffix == ".tfm":
        kind, parameters, fixed = _read_itk_text(path)
    else:
        kind, parameters, fixed = _read_itk_mat(path)
    if not READABLE_TYPES.match(kind):
        raise CaioInputError(f"{path}: transform type {kind} is not supported (expected {AFFINE_TYPE})")
    if parameters.size != 12 or fixed.size != 3 or not np.isfinite(parameters).all() or not np.isfinite(fixed).all():
        raise CaioInputError(f"{path}: an affine needs 12 finite parameters and 3 fixed ones")
    transform = transform_from_itk_parameters(parameters.astype(np.float64), fixed.astype(np.float64))
    if abs(np.linalg.det(transform[:3, :3])) < 1e-8:
        raise CaioInputError(f"{path}: the affine matrix is singular")
    return transform


def _read_itk_text(path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    try:
        lines = [line.strip() for line in path.read_text(errors="strict").splitlines() if line.strip()]
    except (UnicodeDecodeError, OSError) as err:
        raise CaioInputError(f"{path}: not an ITK transform file ({type(err).__name__})") from None
    if not lines or not lines[0].startswith("#Insight Transform File"):
        raise CaioInputError(f"{path}: not an ITK transform file (no '#Insight Transform File' first line)")
    kinds = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Transform:")]
    kinds = [k for k in kinds if not k.startswith("CompositeTransform")]
    if len(kinds) != 1:
        raise CaioInputError(f"{path}: holds {len(kinds)} transforms, expected one affine")

    def numbers(key: str) -> np.ndarray:
        found = [line.split(":", 1)[1] for line in lines if line.startswith(f"{key}:")]
        try:
            return np.array([float(v) for v in found[-1].split()]) if found else np.zeros(0)
        except ValueError:
            raise CaioInputError(f"{path}: {key} are not numbers") from None

    return kinds[0], numbers("Parameters"), numbers("FixedParameters")


def _read_itk_mat(path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        content = loadmat(str(path))
    except Exception as err:  # scipy raises several types for a file that is not MATLAB
        raise CaioInputError(f"{path}: not an ITK transform file ({type(err).__name__})") from None
    kinds = [key for key in content if not key.startswith("__") and key != "fixed"]
    if len(kinds) != 1 or "fixed" not in content:
        raise CaioInputError(f"{path}: not an ITK transform file (keys {sorted(k for k in content if k[:2] != '__')})")
    return kinds[0], np.asarray(content[kinds[0]], np.float64).reshape(-1), np.asarray(content["fixed"]).reshape(-1)


def voxels_to_itk_displacement(disp: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """caio displacement in voxels of a grid (``(3, D0, D1, D2)``) -> ITK vectors ``(3, D0, D1, D2)`` in LPS mm."""
    linear = RAS_TO_LPS[:3, :3] @ np.asarray(affine, np.float64)[:3, :3]
    return np.einsum("ij,j...->i...", linear, np.asarray(disp, np.float64))


def itk_displacement_to_voxels(vectors: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """ITK vectors in LPS mm (``(3, D0, D1, D2)``) -> displacement in voxels of the grid of ``affine``."""
    linear = np.linalg.inv(RAS_TO_LPS[:3, :3] @ np.asarray(affine, np.float64)[:3, :3])
    return np.einsum("ij,j...->i...", linear, np.asarray(vectors, np.float64))


def write_itk_displacement(path: str | os.PathLike, disp: np.ndarray, affine: np.ndarray) -> Path:
    """Write a caio displacement (voxels of the grid of ``affine``, ``(3, D0, D1, D2)``) as an ITK field.

    Raises:
        CaioInputError: the name does not end in ``.nii``/``.nii.gz`` or the file cannot be written.
    """
    if not str(path).endswith((".nii", ".nii.gz")):
        raise CaioInputError(f"{path}: an ITK displacement field name must end in .nii.gz or .nii")
    vectors = voxels_to_itk_displacement(disp, affine).astype(np.float32)
    data = np.moveaxis(vectors, 0, -1)[:, :, :, None, :]  # (X, Y, Z, 1, 3)
    img = nib.Nifti1Image(data, np.asarray(affine, np.float64))
    img.header.set_intent("vector")
    img.header.set_xyzt_units("mm")
    return save_nifti_atomic(path, img)


def read_itk_displacement(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an ITK displacement field: ``(vectors (3, D0, D1, D2) float64 in LPS mm, grid affine (RAS))``.

    Raises:
        CaioInputError: unreadable, not a vector image ``(X, Y, Z, 1, 3)`` with a vector intent, or non-finite.
    """
    img = load_image(path, "ITK displacement field")
    shape = img.shape
    try:
        intent = img.header.get_intent()[0]
    except Exception:
        intent = "none"
    if len(shape) != 5 or shape[3] != 1 or shape[4] != 3 or intent not in VECTOR_INTENTS:
        raise CaioInputError(
            f"{path}: not an ITK displacement field (shape {tuple(shape)}, intent '{intent}'; "
            f"expected (X, Y, Z, 1, 3) with intent vector)"
        )
    try:
        data = np.asarray(img.get_fdata(), np.float64)[:, :, :, 0, :]
    except Exception as err:
        raise CaioInputError(f"{path}: truncated or corrupt displacement data ({type(err).__name__})") from None
    if not np.isfinite(data).all():
        raise CaioInputError(f"{path}: displacement contains NaN or infinite values")
    return np.moveaxis(data, -1, 0), np.asarray(img.affine, np.float64)
