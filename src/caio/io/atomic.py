"""The one home of atomic file writes: write to a temporary name in the target folder, then rename.

A reader never sees a half-written file; the file is synced to disk before the rename and the
folder after it, so a power loss leaves the old file or the complete new one. Temporary names are
unique per process and call (``.<name>.<pid>-<random>.tmp``): they start with ``.`` and end in
:data:`TMP_SUFFIX`, so a resume or a clean-up can recognise leftovers (:func:`is_temporary`,
:func:`remove_stray_temporaries`).

Every temporary file that exists while a write is under way is listed in a process-wide
registry, so a signal handler can remove them (:func:`remove_live_temporaries`) before the
process exits; after that call no new temporary file is created.
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from caio.errors import CaioInputError

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
GZIP_LEVEL = 0
"""Compression level of ``.nii.gz`` outputs: 0 (stored). A float32 displacement hardly compresses (its
mantissa bits are noise): levels 1/6/9 save 7 % of 83 MB for 6-10 s of CPU per field, level 0 takes
about 1 s (the CRC) and stays a valid gzip stream that nibabel loads (docs/measurements.md, "Reading and
writing: throughput and write cost")."""
STRAY_MAX_AGE_S = 6 * 3600.0
"""A temporary file older than this is a leftover even when its process id is alive (reused ids)."""

_TMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-(?P<token>[0-9a-f]+)" + re.escape(TMP_SUFFIX) + "$")
_LIVE: set[Path] = set()
_LIVE_LOCK = threading.RLock()  # re-entrant: a signal handler may run while the main thread holds it
_closing = False


def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh temporary path beside ``path``: ``.<name>.<pid>-<random hex>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a leftover temporary file of :func:`replace_atomically`."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def temporary_owner(path: str | os.PathLike) -> int | None:
    """Process id written into a temporary name by :func:`temporary_name` (``None``: not one)."""
    match = _TMP_NAME.match(Path(path).name)
    return int(match["pid"]) if match else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stray_temporaries(folder: str | os.PathLike, max_age_s: float = STRAY_MAX_AGE_S) -> list[Path]:
    """Remove temporary files in ``folder`` left by dead processes (or older than ``max_age_s``).

    Files of live processes (e.g. concurrent shards writing into the same folder) are kept;
    a process id is only meaningful on this host and in this PID namespace.
    Returns the removed paths.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.iterdir():
        pid = temporary_owner(path)
        if pid is None:
            continue
        try:
            old = now - path.stat().st_mtime > max_age_s
            if pid != os.getpid() and (old or not _pid_alive(pid)):
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # renamed or removed by its owner meanwhile
            continue
    return removed


def live_temporaries() -> list[Path]:
    """Temporary files this process is writing right now."""
    with _LIVE_LOCK:
        return sorted(_LIVE)


def remove_live_temporaries() -> list[Path]:
    """Remove every temporary file this process is writing and refuse new ones (for signal handlers).

    A write that is still running in another thread then fails at its rename; its target is untouched.
    Returns the removed paths.
    """
    global _closing
    acquired = _LIVE_LOCK.acquire(timeout=2.0)
    try:
        _closing = True
        removed = []
        for tmp in list(_LIVE):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
            except OSError as err:
                log.warning("%s: cannot remove temporary file (%s)", tmp, err)
        _LIVE.clear()
        return removed
    finally:
        if acquired:
            _LIVE_LOCK.release()


def _create_temporary(path: Path) -> Path:
    """Create an empty temporary file beside ``path`` and register it (under the registry lock)."""
    with _LIVE_LOCK:
        if _closing:
            raise CaioInputError(f"{path}: not written, the process is shutting down")
        tmp = temporary_name(path)
        with open(tmp, "xb"):
            pass
        _LIVE.add(tmp)
        return tmp


_FSYNC_REFUSED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
"""``fsync`` errors of file systems that cannot sync a folder (some network and FUSE file systems): ignored."""


def fsync_path(path: str | os.PathLike, folder: bool = False) -> None:
    """Flush ``path`` (a file, or with ``folder=True`` a folder's entries) to disk: open, ``os.fsync``, close.

    A folder whose file system refuses ``fsync`` (EINVAL, ENOTSUP) is left as it is.

    Raises:
        OSError: the file or folder cannot be opened or synced.
    """
    flags = os.O_RDONLY | (os.O_DIRECTORY if folder else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as err:
        if not (folder and err.errno in _FSYNC_REFUSED):
            raise
        log.debug("%s: the file system refuses fsync of a folder (%s)", path, err)
    finally:
        os.close(fd)


def replace_atomically(path: str | os.PathLike, write_fn: Callable[[Path], None], mode: int = 0o644) -> Path:
    """Call ``write_fn(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    ``write_fn`` receives a path whose name ends in ``.tmp`` (pass an explicit format to
    writers that infer it from the suffix); the file exists (empty) and may be overwritten.
    The temporary file is removed on any failure (a full disk included), so ``path`` is
    either complete or untouched. The temporary file is flushed to disk (``fsync``) before the
    rename and the folder after it, so a power loss, not only a killed process, leaves the old
    file or the complete new one (:func:`fsync_path`).

    Raises:
        CaioInputError: the folder or the file cannot be written.
    """
    path = Path(path)
    tmp = None
    try:
        tmp = _create_temporary(path)
        write_fn(tmp)
        os.chmod(tmp, mode)
        fsync_path(tmp)  # the bytes on disk before the name points at them
        os.replace(tmp, path)
        fsync_path(path.parent, folder=True)  # the new name itself on disk
    except OSError as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise CaioInputError(f"{path}: cannot write ({err.strerror or err})") from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        if tmp is not None:
            with _LIVE_LOCK:
                _LIVE.discard(tmp)
    return path


def write_nifti_atomic(
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    descrip: str | None = None,
    compresslevel: int = GZIP_LEVEL,
) -> Path:
    """Write a NIfTI file via a temporary name in the same folder, then rename it.

    Args:
        descrip: text for the header's ``descrip`` field (cut to its 80 bytes, ASCII).
        compresslevel: gzip level for a ``.gz`` name (0-9).
    Raises:
        CaioInputError: the folder does not exist or is not writable, or the write fails.
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
    if descrip is not None:
        img.header["descrip"] = descrip.encode("ascii", "replace")[:80]
    gzipped = path.name.endswith(".gz")
    return replace_atomically(path, lambda tmp: _save_nifti(img, tmp, gzipped, compresslevel))


def read_nifti_descrip(path: str | os.PathLike) -> str | None:
    """The header's ``descrip`` text of a NIfTI file (``None`` when unreadable); reads only the header."""
    try:
        raw = nib.load(str(path)).header["descrip"]
        return bytes(np.asarray(raw).item()).decode("ascii", "replace").rstrip("\x00").strip()
    except Exception:
        return None


def _save_nifti(img: nib.Nifti1Image, tmp: Path, gzipped: bool, compresslevel: int = GZIP_LEVEL) -> None:
    """NIfTI bytes to ``tmp`` (whose ``.tmp`` suffix nibabel cannot infer a format from), streamed: nibabel writes
    the header and then the array slab by slab into the file (``to_bytes`` first built the whole file in memory,
    two more copies of an 83 MB field)."""
    with gzip.open(tmp, "wb", compresslevel=compresslevel) if gzipped else open(tmp, "wb") as fh:
        img.to_file_map({"image": nib.FileHolder(fileobj=fh)})


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
