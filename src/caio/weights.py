"""Third-party weights: manifest, lookup by role, hash verification, fetching; ``caio weights``.

The manifest (``weights/manifest.json`` in the repository, copied beside the files in the
container) lists each checkpoint with its ``name``, ``role`` (``backbone_mono``,
``backbone_multi``, ``contrast_adapter``), ``file`` name, download ``urls``, ``sha256``
(``null`` when no hash is published), ``licence``, ``checkpoint_key`` and, for VFA, the
``input_scale`` its network expects on ``[0, 255]`` images.

No weights are required: :func:`resolve` returns ``None`` when a file is absent or fails
its hash, and the pipeline then uses the training-free path. Fetching is a build-time step
(``scripts/fetch_weights.sh``); it uses ``gdown`` when installed, which is not a runtime
dependency. When the manifest has no hash, :func:`fetch` records the hash it saw in
``<file>.sha256`` (``sha256sum`` format) beside the file, and later checks use it.

Weights folder: the ``weights_dir`` argument, else ``$CAIO_WEIGHTS`` (read when called),
else the repository's ``weights/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from caio.errors import CaioInputError

log = logging.getLogger(__name__)

ROLES = ("backbone_mono", "backbone_multi", "contrast_adapter")
REPO_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
MANIFEST_NAME = "manifest.json"

Downloader = Callable[..., None]
"""``downloader(url, output, member=None)``: write the file at ``url`` (for a folder URL, its
``member``) to the path ``output``; raise on failure."""


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


def _manifest_path(weights_dir: Path | None) -> Path:
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
    return next((e for e in load_manifest(_manifest_path(weights_dir)) if e.file == file_name), None)


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
    return [status(e, weights_dir) for e in _select(load_manifest(_manifest_path(weights_dir)), names)]


def resolve(role: str, weights_dir: Path | None = None) -> Path | None:
    """Path of a usable weights file for ``role``, or None (absent, hash mismatch, no manifest).

    Never raises for a missing or broken manifest/file: the caller then runs without weights.
    """
    weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    try:
        entries = load_manifest(_manifest_path(weights_dir))
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


def gdown_download(url: str, output: Path, member: str | None = None) -> None:
    """Default downloader: ``gdown`` (a build-time tool, not a caio dependency).

    For a folder URL only the file named ``member`` is downloaded (the folder is listed with
    ``skip_download=True``, gdown >= 5.1; older versions download the whole folder to a
    temporary directory).
    """
    try:
        import gdown  # type: ignore[import-not-found]
    except ImportError:
        raise CaioInputError("gdown is not installed: run scripts/fetch_weights.sh (pip install gdown)") from None
    if "/folders/" not in url:
        if gdown.download(url, str(output), quiet=False, fuzzy=True) is None:
            raise CaioInputError(f"{url}: download failed")
        return
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".tmp") as tmp:
        try:
            listing = gdown.download_folder(url, output=tmp, quiet=True, skip_download=True, remaining_ok=True) or []
            found_ids = [f.id for f in listing if Path(f.path).name == member]
            if not found_ids:
                raise CaioInputError(f"{url}: folder has no file '{member}'")
            if gdown.download(id=found_ids[0], output=str(output), quiet=False) is None:
                raise CaioInputError(f"{url}: download of '{member}' failed")
            return
        except TypeError:  # gdown < 5.1: no skip_download
            files = gdown.download_folder(url, output=tmp, quiet=False, remaining_ok=True) or []
        found = [Path(f) for f in files if Path(f).name == member]
        if not found:
            raise CaioInputError(f"{url}: folder has no file '{member}'")
        shutil.move(str(found[0]), output)


def fetch(name: str, dest: Path | None = None, downloader: Downloader | None = None) -> Path:
    """Download one manifest entry into ``dest`` (default weights folder) and check its hash.

    The download goes to ``<file>.partial`` and is renamed only after the hash check. With a
    known hash a mismatch deletes the download and raises; with no known hash the observed one
    is written to ``<file>.sha256``. Each URL is tried in turn.

    Raises:
        CaioInputError: unknown name, every URL failed, or sha256 mismatch (nothing left behind).
    """
    dest = Path(dest) if dest is not None else default_weights_dir()
    (entry,) = _select(load_manifest(_manifest_path(dest)), [name])
    downloader = downloader or gdown_download
    dest.mkdir(parents=True, exist_ok=True)
    final, partial = dest / entry.file, dest / (entry.file + ".partial")
    errors = []
    for url in entry.urls:
        try:
            partial.unlink(missing_ok=True)
            downloader(url, partial, member=entry.member)
            if not partial.is_file():
                raise CaioInputError("downloader wrote no file")
            seen = sha256_of(partial)
            if entry.sha256 is not None and seen != entry.sha256:
                raise CaioInputError(f"sha256 {seen} != manifest {entry.sha256}")
        except Exception as err:  # any failure: remove the partial file, try the next URL
            partial.unlink(missing_ok=True)
            errors.append(f"{url}: {err}")
            continue
        os.replace(partial, final)
        if entry.sha256 is None:
            side = final.with_name(final.name + ".sha256")
            side.write_text(f"{seen}  {final.name}\n")
            log.warning("%s: no sha256 in the manifest; recorded %s in %s", final, seen, side)
        log.info("fetched %s -> %s (sha256 %s)", entry.name, final, seen)
        return final
    raise CaioInputError(f"{entry.name}: download failed ({'; '.join(errors)})")


LOADERS: dict[str, tuple[str, str]] = {"vfa": ("caio.vfa", "load_vfa"), "brainid": ("caio.brainid", "load_brainid")}
"""``architecture`` -> (module, ``loader(path, device)``) used by :func:`check_loadable`."""


def check_loadable(entry: WeightEntry, path: Path) -> str | None:
    """Load ``path`` with its architecture's loader on the CPU (strict keys and shapes).

    Returns:
        None when it loads (or no loader is known/importable), else the one-line reason.
    """
    if entry.architecture not in LOADERS:
        return None
    module_name, loader = LOADERS[entry.architecture]
    try:
        import importlib

        load = getattr(importlib.import_module(module_name), loader)
    except (ImportError, AttributeError) as err:
        log.warning("%s: cannot check loading (%s)", entry.name, err)
        return None
    try:
        load(path, "cpu")
    except Exception as err:  # any failure makes the file unusable for the pipeline
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def _select(entries: list[WeightEntry], names: Sequence[str]) -> list[WeightEntry]:
    by_name = {e.name: e for e in entries}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise CaioInputError(f"unknown weights '{unknown[0]}' (known: {', '.join(by_name)})")
    return [by_name[n] for n in names] if names else entries


# ---------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``caio weights [--weights-dir DIR] {list,fetch,verify} [--weights-dir DIR]``."""
    help_dir = "weights folder (default: $CAIO_WEIGHTS, else the repository's weights/)"
    parser.add_argument("--weights-dir", type=Path, default=None, help=help_dir)
    common = argparse.ArgumentParser(add_help=False)  # also accepted after the action
    common.add_argument("--weights-dir", type=Path, default=argparse.SUPPRESS, help=help_dir)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", parents=[common], help="manifest entries with present/missing/hash status")
    p = sub.add_parser("fetch", parents=[common], help="download weights (all, or the named ones); needs gdown")
    p.add_argument("names", nargs="*", metavar="NAME")
    p = sub.add_parser("verify", parents=[common], help="exit 1 unless every (named) weights file is present,"
                                                         " matches its hash and loads into its network")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--no-load", action="store_true", help="only check presence and hashes")


def run(args: argparse.Namespace) -> int:
    weights_dir = args.weights_dir if args.weights_dir is not None else default_weights_dir()
    if args.action == "fetch":
        entries = _select(load_manifest(_manifest_path(weights_dir)), args.names)
        failed = 0
        for entry in entries:  # one failure does not stop the others
            try:
                print(f"{entry.name}: {fetch(entry.name, weights_dir)}")
            except CaioInputError as err:
                failed += 1
                print(f"{entry.name}: FAILED: {err}")
        return 1 if failed else 0
    statuses = verify(weights_dir, getattr(args, "names", ()))
    print(f"weights folder: {weights_dir}")
    bad = 0
    for st in statuses:
        problem = None
        if args.action == "verify" and st.usable and not args.no_load:
            problem = check_loadable(st.entry, st.path)
        state = "unloadable" if problem else st.state
        bad += state in ("missing", "mismatch", "unloadable")
        print(f"{st.entry.name:24} {st.entry.role:17} {state:10} {st.entry.file}" + (f"  ({problem})" if problem else ""))
    return 1 if args.action == "verify" and bad else 0
