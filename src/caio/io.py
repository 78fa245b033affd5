"""LUMIR file interface: dataset JSON, pair naming, volume reading, displacement writing.

Every problem with a user's file raises :class:`caio.errors.CaioInputError` whose message is
one line naming the file and the problem. Output files are written to a temporary name in
the destination folder and renamed, so a reader never sees a half-written file.

On disk a displacement is float32 ``(D0, D1, D2, 3)`` (channel-last), voxel units, identity
affine, as the organizers write it; in memory caio uses channel-first ``(3, D0, D1, D2)``
(see :mod:`caio.spatial` for the convention).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

from caio.errors import CaioInputError

LUMIR_SHAPE: tuple[int, int, int] = (160, 224, 192)
"""Spatial shape of every LUMIR volume (array axes 0, 1, 2)."""

_LUMIR_NAME = re.compile(r"(?P<subject>\d{4})_(?P<modality>\d{4})\.nii(\.gz)?$")


@dataclass(frozen=True)
class Pair:
    """One registration job: warp ``moving`` onto ``fixed``.

    Attributes:
        fixed, moving: absolute paths of the two volumes.
        fixed_id, moving_id: 4-digit subject IDs cut from the file names.
        fixed_modality, moving_modality: 4-digit modality codes (``0000`` is T1w).
        fixed_rel, moving_rel: the paths as written in the dataset JSON.
    """

    fixed: Path
    moving: Path
    fixed_id: str
    moving_id: str
    fixed_modality: str
    moving_modality: str
    fixed_rel: str = ""
    moving_rel: str = ""

    @property
    def key(self) -> str:
        """Case key as in the evaluator's ``metrics.json``: ``"3455_0000<--3454_0000"``."""
        return f"{self.fixed_id}_{self.fixed_modality}<--{self.moving_id}_{self.moving_modality}"

    @property
    def is_cross_contrast(self) -> bool:
        """True when the two modality codes differ (a hint only; the gate decides)."""
        return self.fixed_modality != self.moving_modality


def parse_lumir_name(path: str | os.PathLike) -> tuple[str, str]:
    """Subject and modality IDs of a ``..._SSSS_MMMM.nii.gz`` file name.

    Falls back to the evaluator's character positions (subject = the 4 characters ending
    12 before the end, modality = the 4 before ``.nii.gz``) only when they are digits.

    Raises:
        CaioInputError: if the name does not end in ``_SSSS_MMMM.nii.gz``.
    """
    name = os.path.basename(str(path))
    match = _LUMIR_NAME.search(name)
    if match is None:
        raise CaioInputError(
            f"{path}: file name must end in _SSSS_MMMM.nii.gz (4-digit subject and modality), "
            f"e.g. LUMIRMRI_3455_0000.nii.gz"
        )
    return match.group("subject"), match.group("modality")


def output_names(pair: Pair) -> list[str]:
    """File names the evaluator looks for, short name first.

    The short name ``disp_<FIXED>_<MOVING>.nii.gz`` is always written. The long name
    ``disp_<FIXED>_<FMOD>_<MOVING>_<MMOD>.nii.gz`` is added when the pair is neither
    same-modality nor (fixed ``0000``, moving ``0001``): that is the one the evaluator reads then.
    """
    names = [f"disp_{pair.fixed_id}_{pair.moving_id}.nii.gz"]
    standard = pair.fixed_modality == pair.moving_modality or (
        pair.fixed_modality == "0000" and pair.moving_modality == "0001"
    )
    if not standard:
        names.append(f"disp_{pair.fixed_id}_{pair.fixed_modality}_{pair.moving_id}_{pair.moving_modality}.nii.gz")
    return names


def evaluated_output_name(pair: Pair) -> str:
    """The one file name the official evaluator opens for this pair."""
    return output_names(pair)[-1]


def resolve_data_path(root: Path, relative: str) -> Path:
    """Join a JSON path such as ``./imagesVal/x.nii.gz`` to the data root."""
    rel = relative[2:] if relative.startswith("./") else relative
    path = Path(rel)
    return path if path.is_absolute() else Path(root) / path


def load_pairs(json_path: str | os.PathLike, data_root: str | os.PathLike,
               keys: Sequence[str] | None = None, check_files: bool = True) -> list[Pair]:
    """Read the registration pairs of a LUMIR-style dataset JSON.

    Pairs are taken from every top-level list whose entries are ``{"fixed", "moving"}``
    objects (``validation`` in the official files; ``test``, ``testing`` ... also work),
    in file order, or only from ``keys`` when given. Lists of ``{"image": ...}`` entries
    (``training``) are ignored.

    Raises:
        CaioInputError: missing or malformed JSON, a requested key that is absent, an entry
            without ``fixed``/``moving``, a duplicate pair, no pair at all, a missing image
            file (when ``check_files``) or a file name without LUMIR IDs.
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise CaioInputError(f"{json_path}: dataset JSON not found")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CaioInputError(f"{json_path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CaioInputError(f"{json_path}: top level must be an object with a 'validation' list")
    if keys is None:
        keys = [k for k, v in data.items() if _is_pair_list(v)]
        if not keys:
            raise CaioInputError(f"{json_path}: no list of {{'fixed', 'moving'}} entries (expected key 'validation')")
    pairs: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    for key in keys:
        if key not in data:
            raise CaioInputError(f"{json_path}: key '{key}' not found (keys: {', '.join(map(str, data))})")
        entries = data[key]
        if not isinstance(entries, list):
            raise CaioInputError(f"{json_path}: '{key}' must be a list")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not {"fixed", "moving"} <= set(entry):
                raise CaioInputError(f"{json_path}: entry {i} of '{key}' needs both 'fixed' and 'moving'")
            fixed_rel, moving_rel = str(entry["fixed"]), str(entry["moving"])
            if (fixed_rel, moving_rel) in seen:
                raise CaioInputError(f"{json_path}: duplicate pair fixed={fixed_rel} moving={moving_rel}")
            seen.add((fixed_rel, moving_rel))
            pairs.append(_make_pair(Path(data_root), fixed_rel, moving_rel, check_files))
    if not pairs:
        raise CaioInputError(f"{json_path}: the pair list is empty")
    return pairs


def _is_pair_list(value: object) -> bool:
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(e, dict) and ("fixed" in e or "moving" in e) for e in value))


def _make_pair(root: Path, fixed_rel: str, moving_rel: str, check_files: bool) -> Pair:
    fixed, moving = resolve_data_path(root, fixed_rel), resolve_data_path(root, moving_rel)
    if check_files:
        for path in (fixed, moving):
            if not path.is_file():
                raise CaioInputError(f"{path}: image file not found")
    fixed_id, fixed_mod = parse_lumir_name(fixed_rel)
    moving_id, moving_mod = parse_lumir_name(moving_rel)
    return Pair(fixed, moving, fixed_id, moving_id, fixed_mod, moving_mod, fixed_rel, moving_rel)


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
    from scipy.ndimage import zoom

    factors = [(n - 1) / max(o - 1, 1) for n, o in zip(shape, volume.shape)]
    out = zoom(volume, factors, order=order, mode="nearest", grid_mode=False)
    return out[tuple(slice(0, n) for n in shape)].astype(volume.dtype, copy=False)


def _replace_atomically(path: Path, suffix: str, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file is removed on any failure, so ``path`` is either complete or untouched.

    Raises:
        CaioInputError: the folder or the file cannot be written.
    """
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=folder)
    except OSError as err:
        raise CaioInputError(f"{folder}: cannot write to output folder ({err.strerror or err})") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise CaioInputError(f"{path}: cannot write ({err.strerror or err})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_nifti_atomic(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write a NIfTI file via a temporary name in the same folder, then rename it.

    Raises:
        CaioInputError: the folder does not exist or is not writable.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise CaioInputError(f"{folder}: output folder {what}")
    if not os.access(folder, os.W_OK):
        raise CaioInputError(f"{folder}: output folder is not writable")
    img = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    img.header.set_xyzt_units("mm")
    return _replace_atomically(path, ".nii.gz", lambda tmp: nib.save(img, tmp))


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


def write_json_atomic(path: str | os.PathLike, payload: object) -> Path:
    """Write JSON through a temporary file and rename (NaN/inf written as JSON tokens).

    Missing parent folders are created.

    Raises:
        CaioInputError: the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CaioInputError(f"{path.parent}: cannot write to output folder ({err.strerror or err})") from None

    def dump(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=2)

    return _replace_atomically(path, ".json", dump)

