"""Downloading and checking third-party weights (``scripts/fetch_weights.sh``, ``caio weights``).

Fetching is a build-time step; it uses ``gdown`` when installed, which is not a runtime
dependency. When the manifest has no hash, :func:`fetch` records the hash it saw in
``<file>.sha256`` (``sha256sum`` format) beside the file, and later checks use it. Where
the weights live and which file serves a role is :mod:`caio.weights.manifest`.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from caio.errors import CaioInputError
from caio.io.atomic import replace_atomically
from caio.weights.manifest import (
    default_weights_dir,
    load_manifest,
    manifest_path,
    select,
    sha256_of,
)

log = logging.getLogger(__name__)

Downloader = Callable[..., None]
"""``downloader(url, output, member=None)``: write the file at ``url`` (for a folder URL, its
``member``) to the path ``output``; raise on failure."""


def _import_gdown(name: str = "gdown") -> ModuleType:
    """Import the module ``name`` (``gdown``, a build-time tool, not a caio dependency).

    Raises:
        CaioInputError: the module is not installed.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        raise CaioInputError("gdown is not installed: run scripts/fetch_weights.sh (pip install gdown)") from None


def gdown_download(url: str, output: Path, member: str | None = None, *, gdown: Any = None) -> None:
    """Default downloader: ``gdown`` (a build-time tool, not a caio dependency).

    For a folder URL only the file named ``member`` is downloaded (the folder is listed with
    ``skip_download=True``, gdown >= 5.1; older versions download the whole folder to a
    temporary directory). ``gdown``: the module (or an object with its ``download`` and
    ``download_folder``); ``None`` imports it.

    Raises:
        CaioInputError: gdown not installed, download failed, or the folder has no ``member``.
    """
    if gdown is None:
        gdown = _import_gdown()
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

    The download goes to a temporary name (:func:`caio.io.atomic.replace_atomically`) and is
    renamed only after the hash check. With a known hash a mismatch deletes the download and
    raises; with no known hash the observed one is written to ``<file>.sha256``. Each URL is
    tried in turn.

    Raises:
        CaioInputError: unknown name, every URL failed, or sha256 mismatch (nothing left behind).
    """
    dest = Path(dest) if dest is not None else default_weights_dir()
    (entry,) = select(load_manifest(manifest_path(dest)), [name])
    downloader = downloader or gdown_download
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / entry.file
    errors = []
    for url in entry.urls:
        seen: list[str] = []

        def download(tmp: Path, url: str = url, seen: list[str] = seen) -> None:
            downloader(url, tmp, member=entry.member)
            if not tmp.is_file():
                raise CaioInputError("downloader wrote no file")
            seen.append(sha256_of(tmp))
            if entry.sha256 is not None and seen[0] != entry.sha256:
                raise CaioInputError(f"sha256 {seen[0]} != manifest {entry.sha256}")

        try:
            replace_atomically(final, download)
        except Exception as err:  # any failure (the download is removed): try the next URL
            errors.append(f"{url}: {err}")
            continue
        if entry.sha256 is None:
            side = final.with_name(final.name + ".sha256")
            replace_atomically(side, lambda tmp, digest=seen[0]: tmp.write_text(f"{digest}  {final.name}\n"))
            log.warning("%s: no sha256 in the manifest; recorded %s in %s", final, seen[0], side)
        log.info("fetched %s -> %s (sha256 %s)", entry.name, final, seen[0])
        return final
    raise CaioInputError(f"{entry.name}: download failed ({'; '.join(errors)})")
