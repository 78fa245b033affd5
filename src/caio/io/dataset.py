"""LUMIR dataset interface: the dataset JSON, pair naming, output file names, input-file checks.

Every problem with a user's file raises :class:`caio.errors.CaioInputError` whose message is
one line naming the file and the problem.

Decisions on the dataset JSON (README "Bad input"):

* A problem with the JSON itself (not found, malformed, no pair list, an empty pair list, an
  entry without ``fixed``/``moving``, a file name without LUMIR IDs, a relative path that
  climbs out of the data root) stops the run before any computation (exit 2): the file
  must be fixed, and nothing has been computed yet.
* The same pair listed twice is registered once, with a warning (its output would be identical).
* Relative paths are resolved against the data root and must stay inside it (``../x.nii.gz``
  that leaves the root is refused; ``..`` inside the root is fine). Absolute paths are taken as
  they are: writing one is an explicit choice of file. Symbolic links are not resolved for the check.
* An image file that cannot be used (:func:`check_input_file`) skips only its pair in ``predict``.
* A JSON file above :data:`MAX_JSON_BYTES` is refused before it is parsed; deep nesting is a parse error.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from caio.errors import CaioInputError

log = logging.getLogger(__name__)

LUMIR_SHAPE: tuple[int, int, int] = (160, 224, 192)
"""Spatial shape of every LUMIR volume (array axes 0, 1, 2)."""

MAX_JSON_BYTES = 64 << 20
"""Largest dataset JSON read (the official LUMIR25_dataset.json, 3384 training entries, is 0.3 MiB)."""

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
    """Join a JSON path such as ``./imagesVal/x.nii.gz`` to the data root.

    Absolute paths are returned unchanged. A relative path must stay inside ``root`` once
    ``.`` and ``..`` are folded (lexically: symbolic links inside the root may point anywhere).

    Raises:
        CaioInputError: a relative path that leaves the data root (``../x.nii.gz``), or an empty path.
    """
    if not relative.strip():
        raise CaioInputError(f"{root}: empty image path in the dataset JSON")
    path = Path(relative)
    if path.is_absolute():
        return path
    folded = os.path.normpath(relative)
    if folded == ".." or folded.startswith(".." + os.sep):
        raise CaioInputError(
            f"{relative}: path leaves the data root {root} (relative paths must stay inside it; "
            f"write an absolute path to use a file elsewhere)"
        )
    return Path(root) / folded


def check_input_file(path: str | os.PathLike, what: str = "image") -> Path:
    """Make sure ``path`` is a non-empty regular file that can be opened, without blocking.

    Checked before any reader touches the file: a FIFO or a device would block or never end.

    Raises:
        CaioInputError: one line naming ``path`` and the problem (not found, a folder, a symlink
            loop, a parent that is a file, not a regular file, empty, permission denied, read error).
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except ValueError:  # a NUL byte in the name (e.g. from a dataset JSON)
        raise CaioInputError(f"{str(path)!r}: invalid file name (it contains a NUL byte)") from None
    except OSError as err:
        reasons = {
            errno.ENOENT: f"{what} file not found",
            errno.ELOOP: "symbolic link loop (the link never reaches a file)",
            errno.ENOTDIR: "a folder in the path is a file",
            errno.EACCES: "permission denied",
            errno.ENAMETOOLONG: "file name too long",
        }
        raise CaioInputError(f"{path}: {reasons.get(err.errno, err.strerror or str(err))}") from None
    if stat.S_ISDIR(info.st_mode):
        raise CaioInputError(f"{path}: is a folder, expected {_a(what)} file")
    if not stat.S_ISREG(info.st_mode):
        raise CaioInputError(f"{path}: not a regular file (a FIFO, socket or device), expected {_a(what)} file")
    if info.st_size == 0:
        raise CaioInputError(f"{path}: empty file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as err:
        raise CaioInputError(f"{path}: cannot read ({err.strerror or err})") from None
    return path


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def load_pairs(
    json_path: str | os.PathLike,
    data_root: str | os.PathLike,
    keys: Sequence[str] | None = None,
    check_files: bool = True,
) -> list[Pair]:
    """Read the registration pairs of a LUMIR-style dataset JSON.

    Pairs are taken from every top-level list whose entries are ``{"fixed", "moving"}``
    objects (``validation`` in the official files; ``test``, ``testing`` ... also work),
    in file order, or only from ``keys`` when given. Lists of ``{"image": ...}`` entries
    (``training``) are ignored.

    Raises:
        CaioInputError: missing or malformed JSON, a requested key that is absent, an entry
            without ``fixed``/``moving``, no pair at all (or an empty list), a relative path
            leaving the data root, an unusable image file (when ``check_files``) or a file name
            without LUMIR IDs. A pair listed twice is kept once, with a warning.
    """
    json_path = Path(json_path)
    data = _read_json_object(json_path)
    if keys is None:
        keys = [k for k, v in data.items() if _is_pair_list(v)]
        if not keys:
            empty = [k for k, v in data.items() if isinstance(v, list) and not v and k not in ("training",)]
            if empty:
                raise CaioInputError(f"{json_path}: the pair list '{empty[0]}' is empty (no pair to register)")
            raise CaioInputError(f"{json_path}: no list of {{'fixed', 'moving'}} entries (expected key 'validation')")
    pairs: list[Pair] = []
    seen: set[tuple[Path, Path]] = set()
    for key in keys:
        if key not in data:
            raise CaioInputError(f"{json_path}: key '{key}' not found (keys: {', '.join(map(str, data))})")
        entries = data[key]
        if not isinstance(entries, list):
            raise CaioInputError(f"{json_path}: '{key}' must be a list")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not {"fixed", "moving"} <= set(entry):
                missing = (
                    "an object"
                    if not isinstance(entry, dict)
                    else "'" + "', '".join(k for k in ("fixed", "moving") if k not in entry) + "'"
                )
                raise CaioInputError(
                    f"{json_path}: entry {i} of '{key}' needs both 'fixed' and 'moving' (missing {missing})"
                )
            try:
                pair = _make_pair(Path(data_root), str(entry["fixed"]), str(entry["moving"]), check_files)
            except CaioInputError as err:
                raise CaioInputError(f"{json_path}: entry {i} of '{key}': {err}") from None
            if (pair.fixed, pair.moving) in seen:
                log.warning(
                    "%s: entry %d of '%s' repeats the pair fixed=%s moving=%s; registered once",
                    json_path,
                    i,
                    key,
                    pair.fixed_rel,
                    pair.moving_rel,
                )
                continue
            seen.add((pair.fixed, pair.moving))
            pairs.append(pair)
    if not pairs:
        raise CaioInputError(f"{json_path}: the pair list is empty")
    return pairs


def _read_json_object(json_path: Path) -> dict:
    """The parsed top-level object of a dataset JSON (at most :data:`MAX_JSON_BYTES`).

    Raises:
        CaioInputError: unusable file, too large, not JSON (deep nesting included), not an object.
    """
    check_input_file(json_path, "dataset JSON")
    size = json_path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise CaioInputError(
            f"{json_path}: {size >> 20} MiB, more than the {MAX_JSON_BYTES >> 20} MiB a dataset JSON may have "
            "(the official one is 0.3 MiB)"
        )
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CaioInputError(f"{json_path}: not valid JSON ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise CaioInputError(f"{json_path}: top level must be an object with a 'validation' list")
    return data


def _is_pair_list(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(e, dict) and ("fixed" in e or "moving" in e) for e in value)
    )


def _make_pair(root: Path, fixed_rel: str, moving_rel: str, check_files: bool) -> Pair:
    fixed, moving = resolve_data_path(root, fixed_rel), resolve_data_path(root, moving_rel)
    fixed_id, fixed_mod = parse_lumir_name(fixed_rel)
    moving_id, moving_mod = parse_lumir_name(moving_rel)
    if check_files:
        for path in (fixed, moving):
            check_input_file(path)
    return Pair(fixed, moving, fixed_id, moving_id, fixed_mod, moving_mod, fixed_rel, moving_rel)
