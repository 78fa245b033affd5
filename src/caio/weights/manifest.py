"""The one weights-folder lookup: where the weights folder is, the manifest, and which file serves a role.

The manifest (``weights/manifest.json`` in the repository, copied beside the files in the
container) lists each checkpoint with its ``name``, ``role`` (``backbone_mono``,
``backbone_multi``, ``contrast_adapter``), ``file`` name, download ``urls``, ``sha256``
(``null`` when no hash is published), ``licence``, ``checkpoint_key`` and, for VFA, the
``input_scale`` its network expects on ``[0, 255]`` images.

No weights are required: :func:`resolve` returns ``None`` when a file is absent or fails
its hash, and the pipeline then uses the training-free path. Downloading is in
:mod:`caio.weights.fetch`; the cascade's pretrained start (``caio pretrain``) is found by
:func:`cascade_init_path`.

Weights folder: the ``weights_dir`` argument, else ``$CAIO_WEIGHTS`` (read when called),
else the repository's ``weights/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from caio.errors import CaioInputError

log = logging.getLogger(__name__)

ROLES = ("backbone_mono", "backbone_multi", "contrast_adapter")
REPO_WEIGHTS_DIR = Path(__file__).resolve().parents[3] / "weights"
MANIFEST_NAME = "manifest.json"
CASCADE_INIT_NAME = "cascade_init.pt"
"""File in the weights folder with the cascade's pretrained initial weights (``caio pretrain``)."""


@dataclass(frozen=True)
class WeightEntry:
    """One manifest entry (see the module docstring for the fields)."""

    name: str
    role: str
    file: str
    urls: tuple[str, ...]
    sha256: str | None
    licence: str
    checkpoint_key: str | None
    member: str | None = None
    architecture: str | None = None
    input_scale: float | None = None
    source: str = ""
    notes: str = ""


@dataclass(frozen=True)
class WeightStatus:
    """State of one entry's file: ``state`` is ``missing``, ``ok`` (hash matches the manifest),
    ``recorded`` (matches the hash recorded at fetch time), ``unverified`` (no hash known)
    or ``mismatch``."""

    entry: WeightEntry
    path: Path
    state: str
    sha256: str | None = None

    @property
    def usable(self) -> bool:
        return self.state in ("ok", "recorded", "unverified")


def default_weights_dir() -> Path:
    """``$CAIO_WEIGHTS`` if set, else the repository's ``weights/`` folder."""
    env = os.environ.get("CAIO_WEIGHTS")
    return Path(env) if env else REPO_WEIGHTS_DIR


def manifest_path(weights_dir: Path | None) -> Path:
    """The manifest beside the weights if there is one, else the repository's."""
    if weights_dir is not None and (Path(weights_dir) / MANIFEST_NAME).is_file():
        return Path(weights_dir) / MANIFEST_NAME
    return REPO_WEIGHTS_DIR / MANIFEST_NAME


def load_manifest(path: str | os.PathLike | None = None) -> list[WeightEntry]:
    """Parse a manifest (default: the repository's ``weights/manifest.json``).

    Raises:
        CaioInputError: missing file, invalid JSON, missing field, unknown role, duplicate name.
    """
    path = Path(path) if path is not None else REPO_WEIGHTS_DIR / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CaioInputError(f"{path}: weights manifest not found") from None
    except (OSError, ValueError) as err:
        raise CaioInputError(f"{path}: cannot read weights manifest ({err})") from None
    entries: list[WeightEntry] = []
    for i, item in enumerate(raw.get("weights", []) if isinstance(raw, dict) else []):
        try:
            entry = WeightEntry(
                name=item["name"], role=item["role"], file=item["file"], urls=tuple(item["urls"]),
                sha256=(item["sha256"].lower() if item.get("sha256") else None), licence=item["licence"],
                checkpoint_key=item.get("checkpoint_key"), member=item.get("member"),
                architecture=item.get("architecture"), input_scale=item.get("input_scale"),
                source=item.get("source", ""), notes=item.get("notes", ""))
        except (KeyError, TypeError) as err:
            raise CaioInputError(f"{path}: weights entry {i} lacks field {err}") from None
        if entry.role not in ROLES:
            raise CaioInputError(f"{path}: weights entry '{entry.name}' has unknown role '{entry.role}'")
        if Path(entry.file).name != entry.file:
            raise CaioInputError(f"{path}: weights entry '{entry.name}' file must be a plain name, got '{entry.file}'")
        if any(e.name == entry.name for e in entries):
            raise CaioInputError(f"{path}: duplicate weights entry '{entry.name}'")
        entries.append(entry)
    if not entries:
        raise CaioInputError(f"{path}: no 'weights' entries")
    return entries


def entry_for_file(file_name: str, weights_dir: Path | None = None) -> WeightEntry | None:
    """The manifest entry whose ``file`` is ``file_name``, or None."""
    return next((e for e in load_manifest(manifest_path(weights_dir)) if e.file == file_name), None)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _recorded_hash(path: Path) -> str | None:
    side = path.with_name(path.name + ".sha256")
    try:
        return side.read_text().split()[0].lower()
    except (OSError, IndexError):
        return None


def status(entry: WeightEntry, weights_dir: Path) -> WeightStatus:
    """Check one entry's file in ``weights_dir`` (hashes it when a hash is known)."""
    path = Path(weights_dir) / entry.file
    if not path.is_file():
        return WeightStatus(entry, path, "missing")
    expected, state = entry.sha256, "ok"
    if expected is None:
        expected, state = _recorded_hash(path), "recorded"
    if expected is None:
        return WeightStatus(entry, path, "unverified")
    seen = sha256_of(path)
    return WeightStatus(entry, path, state if seen == expected else "mismatch", seen)


def verify(weights_dir: Path | None = None, names: Sequence[str] = ()) -> list[WeightStatus]:
    """Status of the named entries (all when ``names`` is empty).

    Raises:
        CaioInputError: a name not in the manifest.
    """
    weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    return [status(e, weights_dir) for e in select(load_manifest(manifest_path(weights_dir)), names)]


def resolve(role: str, weights_dir: Path | None = None) -> Path | None:
    """Path of a usable weights file for ``role``, or None (absent, hash mismatch, no manifest).

    Never raises for a missing or broken manifest/file: the caller then runs without weights.
    """
    weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    try:
        entries = load_manifest(manifest_path(weights_dir))
    except CaioInputError as err:
        log.warning("no usable weights manifest (%s): running without weights", err)
        return None
    for entry in (e for e in entries if e.role == role):
        try:
            st = status(entry, weights_dir)
        except OSError as err:
            log.error("weights %s unreadable (%s): ignored", entry.file, err)
            continue
        if st.state == "mismatch":
            log.error("%s: sha256 %s does not match %s: ignored", st.path, st.sha256, "the manifest"
                      if entry.sha256 else "the hash recorded at fetch time")
        elif st.usable:
            return st.path
    return None


def select(entries: list[WeightEntry], names: Sequence[str]) -> list[WeightEntry]:
    """The entries named in ``names`` (all when empty); CaioInputError for an unknown name."""
    by_name = {e.name: e for e in entries}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise CaioInputError(f"unknown weights '{unknown[0]}' (known: {', '.join(by_name)})")
    return [by_name[n] for n in names] if names else entries


def weights_dir_or_default(weights_dir: str | os.PathLike | None) -> Path:
    """``weights_dir`` as a Path, or :func:`default_weights_dir` when it is ``None``."""
    return Path(weights_dir) if weights_dir is not None else default_weights_dir()


def cascade_init_path(weights_dir: str | os.PathLike | None = None) -> Path | None:
    """``cascade_init.pt`` (written by ``caio pretrain``) in the weights folder, if present."""
    path = weights_dir_or_default(weights_dir) / CASCADE_INIT_NAME
    return path if path.is_file() else None
