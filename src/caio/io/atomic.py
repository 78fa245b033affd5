"""The one home of atomic file writes: write to a temporary name in the target folder, then rename.

A reader never sees a half-written file. Temporary names are unique per process and call
(``.<name>.<pid>-<random>.tmp``): they start with ``.`` and end in :data:`TMP_SUFFIX`, so a
resume or a clean-up can recognise leftovers (:func:`is_temporary`).
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from caio.errors import CaioInputError

TMP_SUFFIX = ".tmp"


def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh temporary path beside ``path``: ``.<name>.<pid>-<random hex>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a leftover temporary file of :func:`replace_atomically`."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def replace_atomically(path: str | os.PathLike, write_fn: Callable[[Path], None], mode: int = 0o644) -> Path:
    """Call ``write_fn(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    ``write_fn`` receives a path whose name ends in ``.tmp`` (pass an explicit format to
    writers that infer it from the suffix). The temporary file is removed on any failure,
    so ``path`` is either complete or untouched.

    Raises:
        CaioInputError: the folder or the file cannot be written.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write_fn(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CaioInputError(f"{path}: cannot write ({err.strerror or err})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    return replace_atomically(path, lambda tmp: _save_nifti(img, tmp, gzipped=path.name.endswith(".gz")))


def _save_nifti(img: nib.Nifti1Image, tmp: Path, gzipped: bool) -> None:
    """NIfTI bytes to ``tmp`` (whose ``.tmp`` suffix nibabel cannot infer a format from)."""
    data = img.to_bytes()
    if gzipped:
        with gzip.open(tmp, "wb", compresslevel=1) as fh:
            fh.write(data)
    else:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, payload: object) -> Path:
    """Write JSON through a temporary file and rename (NaN/inf written as JSON tokens).

    Missing parent folders are created.

    Raises:
        CaioInputError: the folder cannot be created or written.
    """
    return write_text_atomic(path, json.dumps(payload, indent=2))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file through a temporary name and rename (parent folders created).

    Raises:
        CaioInputError: the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CaioInputError(f"{path.parent}: cannot write to output folder ({err.strerror or err})") from None
    return replace_atomically(path, lambda tmp: tmp.write_text(text))
